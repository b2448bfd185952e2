"""The pure maths of PPO (`selfreward ppo`): statistics, KL-shaped rewards, advantages, reward scaling and
KL control. No model is loaded here; every function is checked by hand in tests/test_rl_math.py.

Tensors are (B, T): B responses, T response tokens, right-padded; `mask` is True on a response's
tokens (its end-of-sequence token included) and False on padding.

- `masked_mean`, `masked_var`, `whiten`: statistics over the response tokens only.
- `kl_penalized_rewards`: per-token reward = -kl_coef * (log pi - log pi_ref), plus the sequence
  score on the response's last token (Ziegler et al. 2019; Stiennon et al. 2020).
- `gae`: generalised advantage estimation (Schulman et al. 2016) and the returns.
- `RunningMeanStd`, `RewardScaler`: ICE-GRT's reward scaling (running mean/std, a scale factor) and
  reward clipping.
- `AdaptiveKLController`, `FixedKLController`: KL control.
"""

from __future__ import annotations

import math

import torch

# --------------------------------------------------------------------------- statistics over masked tokens


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` where `mask` is True (over all elements, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` where `mask` is True; unbiased (n - 1) when at least two elements are counted."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked elements (unbiased variance); positions outside the mask become 0.

    With `shift_mean=False` the mean is added back (unit variance, mean kept).

    x = [1, 2, 3, 100], mask = [1, 1, 1, 0]: mean 2, variance ((-1)^2 + 0 + 1^2) / (3 - 1) = 1,
    so whiten = [-1, 0, 1, 0]; with shift_mean=False: [1, 2, 3, 0].
    """

    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked tokens: 1 is a perfect critic, 0 or
    below one no better than predicting the mean. NaN when the returns do not vary."""
    var_returns = masked_var(returns, mask).item()
    if var_returns == 0:
        return math.nan
    return 1.0 - masked_var(returns - values, mask).item() / var_returns


# --------------------------------------------------------------------------- per-token rewards and GAE


def kl_penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards (B, T) and per-token KL estimates (B, T).

    kl_t = log pi(y_t) - log pi_ref(y_t) (0 on padding); reward_t = -kl_coef * kl_t, and the response's
    score (B,) is added on its last token.

    scores = [2], logprobs = [[-1, -2, -3]], ref_logprobs = [[-1.5, -2, -2]], mask = [[1, 1, 0]],
    kl_coef = 0.1: kl = [[0.5, 0, 0]] (the third token is padding), reward = [[-0.05, 0 + 2, 0]].
    """

    m = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * m
    rewards = -kl_coef * kl
    last = (mask.long().sum(1) - 1).clamp(min=0)
    rewards[torch.arange(rewards.shape[0]), last] += scores.to(rewards.dtype)
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, masks: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (both (B, T), 0 on padding) by generalised advantage estimation.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token is 0),
    A_t = delta_t + gamma * lam * A_{t+1}, returns_t = A_t + V_t.

    rewards = [0, 0, 1], values = [0.5, 0.5, 0.5], gamma = 1, lam = 0.5:
      t=2: delta = 1 + 0 - 0.5 = 0.5,      A = 0.5
      t=1: delta = 0 + 0.5 - 0.5 = 0,      A = 0 + 0.5 * 0.5 = 0.25
      t=0: delta = 0,                      A = 0 + 0.5 * 0.25 = 0.125
      returns = [0.625, 0.75, 1.0]
    """

    m = masks.to(values.dtype)
    rewards, values = rewards * m, values * m
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_adv
        advantages[:, t] = next_adv
    advantages = advantages * m
    return advantages, (advantages + values) * m


# --------------------------------------------------------------------------- reward scaling and KL control


class RunningMeanStd:
    """Mean and (population) variance of every value seen so far, updated one batch at a time
    (Chan et al.'s parallel combination, so batches of any size give the same result as one pass).

    [1, 2, 3] then [4, 5]: after the first batch mean 2, var 2/3; combining with the batch (mean 4.5,
    var 0.25, n 2): delta = 2.5, mean = 2 + 2.5 * 2/5 = 3,
    M2 = 2/3 * 3 + 0.25 * 2 + 2.5^2 * 3 * 2 / 5 = 2 + 0.5 + 7.5 = 10, var = 10 / 5 = 2
    (= the variance of 1..5).
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 0.0
        self.count = 0

    def update(self, values: list[float]) -> None:
        n = len(values)
        if n == 0:
            return
        batch_mean = sum(values) / n
        batch_var = sum((v - batch_mean) ** 2 for v in values) / n
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.var)


class RewardScaler:
    """ICE-GRT's reward scaling and clipping: the running statistics are updated with each batch of raw
    rewards, then each reward becomes clip(scale * (r - mean) / (std + eps), -clip, clip) (without
    `normalize`: clip(scale * r, ...); `clip` None: no clipping).

    After [1, 2, 3, 4, 5] (mean 3, var 2), with scale 2: r = 5 -> 2 * 2 / sqrt(2) = 2.83, clipped at 2 -> 2.
    """

    def __init__(self, normalize: bool, scale: float, clip: float | None, eps: float = 1e-8) -> None:
        self.normalize, self.scale, self.clip, self.eps = normalize, scale, clip, eps
        self.stats = RunningMeanStd()

    def __call__(self, rewards: list[float]) -> list[float]:
        if self.normalize:
            self.stats.update(rewards)
            rewards = [(r - self.stats.mean) / (self.stats.std + self.eps) for r in rewards]
        scaled = [self.scale * r for r in rewards]
        if self.clip is not None:
            scaled = [max(-self.clip, min(self.clip, r)) for r in scaled]
        return scaled


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Ziegler et al. 2019: move the KL coefficient so that the observed KL approaches `target`.

    error = clip(current_kl / target - 1, -0.2, 0.2); value *= 1 + error * n_steps / horizon.

    init 0.2, target 6, horizon 100, n_steps 10: KL 9 -> error clip(0.5) = 0.2, value 0.2 * 1.02 = 0.204;
    then KL 5.7 -> error -0.05, value 0.204 * 0.995 = 0.20298.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
