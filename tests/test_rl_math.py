"""PPO's reward and advantage arithmetic (`baselines/rl_math.py`) against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from selfreward.baselines.rl_math import (
    AdaptiveKLController,
    FixedKLController,
    RewardScaler,
    RunningMeanStd,
    explained_variance,
    gae,
    kl_penalized_rewards,
    whiten,
)


def test_whiten_uses_only_masked_tokens() -> None:
    """x = [1, 2, 3, 100], mask = [1, 1, 1, 0]: mean 2, unbiased variance (1 + 0 + 1) / 2 = 1,
    so whiten = [-1, 0, 1, 0] (the 100 is padding: ignored and zeroed); shift_mean=False adds the
    mean back: [1, 2, 3, 0]."""
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert whiten(x, mask).tolist()[0] == pytest.approx([-1, 0, 1, 0], abs=1e-6)
    assert whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([1, 2, 3, 0], abs=1e-6)


def test_whiten_over_a_batch() -> None:
    """[[1, 2], [3, 4]], all tokens: mean 2.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3,
    std 1.2910: [[-1.1619, -0.3873], [0.3873, 1.1619]]."""
    out = whiten(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.ones(2, 2, dtype=torch.bool))
    s = math.sqrt(5 / 3)
    assert out.flatten().tolist() == pytest.approx([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], abs=1e-5)


def test_gae_hand_worked() -> None:
    """Row 1: rewards [0, 0, 1], values [0.5, 0.5, 0.5], gamma 1, lam 0.5:
    t=2: delta = 1 + 0 - 0.5 = 0.5, A = 0.5
    t=1: delta = 0 + 0.5 - 0.5 = 0, A = 0.5 * 0.5 = 0.25
    t=0: delta = 0, A = 0.5 * 0.25 = 0.125;  returns = A + V = [0.625, 0.75, 1.0]
    """
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5]]), torch.ones(1, 3), 1.0, 0.5)
    assert adv.tolist()[0] == pytest.approx([0.125, 0.25, 0.5])
    assert ret.tolist()[0] == pytest.approx([0.625, 0.75, 1.0])


def test_gae_ignores_padding() -> None:
    """rewards [0, 2, 5(pad)], values [1, 1, 9(pad)], mask [1, 1, 0], gamma 0.9, lam 0.95: the padded
    position counts as the end (value 0, reward 0):
      t=1: delta = 2 + 0.9 * 0 - 1 = 1, A = 1
      t=0: delta = 0 + 0.9 * 1 - 1 = -0.1, A = -0.1 + 0.9 * 0.95 * 1 = 0.755
      returns = [1.755, 2, 0]; padding gets 0.
    """
    adv, ret = gae(
        torch.tensor([[0.0, 2.0, 5.0]]),
        torch.tensor([[1.0, 1.0, 9.0]]),
        torch.tensor([[True, True, False]]),
        0.9,
        0.95,
    )
    assert adv.tolist()[0] == pytest.approx([0.755, 1.0, 0.0])
    assert ret.tolist()[0] == pytest.approx([1.755, 2.0, 0.0])


def test_kl_penalized_rewards_put_the_score_on_the_last_token() -> None:
    """scores [2], logprobs [-1, -2, -3], ref [-1.5, -2, -2], mask [1, 1, 0], kl_coef 0.1:
    kl = [0.5, 0, 0] (the third token is padding), rewards = [-0.05, 0 + 2, 0]."""
    rewards, kl = kl_penalized_rewards(
        torch.tensor([2.0]),
        torch.tensor([[-1.0, -2.0, -3.0]]),
        torch.tensor([[-1.5, -2.0, -2.0]]),
        torch.tensor([[True, True, False]]),
        0.1,
    )
    assert kl.tolist()[0] == pytest.approx([0.5, 0.0, 0.0])
    assert rewards.tolist()[0] == pytest.approx([-0.05, 2.0, 0.0])


def test_running_mean_std_combines_batches() -> None:
    """[1, 2, 3] then [4, 5]: mean 2, var 2/3 after the first; then delta = 4.5 - 2 = 2.5,
    mean = 2 + 2.5 * 2/5 = 3, M2 = 2/3 * 3 + 0.25 * 2 + 2.5^2 * 3 * 2/5 = 10, var = 10/5 = 2."""
    stats = RunningMeanStd()
    stats.update([1, 2, 3])
    assert (stats.mean, stats.var) == pytest.approx((2.0, 2 / 3))
    stats.update([4, 5])
    assert (stats.mean, stats.var, stats.count) == pytest.approx((3.0, 2.0, 5))


def test_reward_scaler_normalises_scales_and_clips() -> None:
    """Running stats over [1, 2, 3] then [4, 5] are mean 3, std sqrt(2). With scale 2 the second batch
    becomes 2 * (4 - 3) / 1.4142 = 1.414 and 2 * (5 - 3) / 1.4142 = 2.83, clipped at 2 -> 2."""
    scaler = RewardScaler(normalize=True, scale=2.0, clip=2.0)
    first = scaler([1, 2, 3])  # its own stats: mean 2, std sqrt(2/3) -> 2 * [-1.2247, 0, 1.2247], clipped
    assert first == pytest.approx([-2.0, 0.0, 2.0])
    assert scaler([4, 5]) == pytest.approx([math.sqrt(2), 2.0], abs=1e-6)
    assert RewardScaler(normalize=False, scale=0.5, clip=None)([3, -8]) == [1.5, -4.0]
    assert RewardScaler(normalize=False, scale=1.0, clip=1.0)([3, -8, 0.5]) == [1.0, -1.0, 0.5]


def test_adaptive_kl_controller() -> None:
    """init 0.2, target 6, horizon 100, n_steps 10:
    KL 9: error = clip(9/6 - 1 = 0.5, +-0.2) = 0.2, coef = 0.2 * (1 + 0.2 * 10/100) = 0.204;
    KL 5.7: error = -0.05, coef = 0.204 * (1 - 0.05 * 0.1) = 0.20298;
    KL 0: error = clip(-1) = -0.2, coef = 0.20298 * 0.98 = 0.1989204."""
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=100)
    ctl.update(9.0, 10)
    assert ctl.value == pytest.approx(0.204)
    ctl.update(5.7, 10)
    assert ctl.value == pytest.approx(0.20298)
    ctl.update(0.0, 10)
    assert ctl.value == pytest.approx(0.1989204)
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 10)
    assert fixed.value == 0.1


def test_explained_variance() -> None:
    """returns [1, 2, 3], values = returns -> 1; values [2, 2, 2] (the mean) -> 1 - Var(ret)/Var(ret) = 0."""
    ret, mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3, dtype=torch.bool)
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 3), 2.0), ret, mask) == pytest.approx(0.0)
    assert math.isnan(explained_variance(ret, torch.ones(1, 3), mask))
