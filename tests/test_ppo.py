"""PPO on the tiny model: losses against hand-worked numbers, the mechanics with stub rewards (weights move,
KL is logged, a perfect critic gives zero advantages), LoRA, and `selfreward ppo` end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfreward.artifacts import RunPaths, read_jsonl
from selfreward.baselines.ppo import PPOTrainer, policy_loss, run_ppo, value_loss
from selfreward.baselines.rewards import RewardFunction
from selfreward.config import ConfigError, PPOConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Name a colour.", "What is 2 + 2?", "Write a haiku about rain.", "Say hello."]
LOG_FIELDS = {
    "step",
    "reward_raw",
    "reward_scaled",
    "unscored",
    "kl",
    "kl_coef",
    "entropy",
    "policy_loss",
    "value_loss",
    "clip_frac",
    "value_clip_frac",
    "approx_kl",
    "explained_variance",
    "response_length",
    "rollout_s",
    "update_s",
}


class LengthReward(RewardFunction):
    """Longer responses score higher: a cheap deterministic reward that differs between responses."""

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [len(r) / 20 for r in responses]


class ConstantReward(RewardFunction):
    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [self.value] * len(responses)


def test_policy_loss_hand_worked() -> None:
    """ratio 1.5 on two tokens, advantages [1, -1], clip 0.2: token losses max(-1.5, -1.2) = -1.2 (clipped) and
    max(1.5, 1.2) = 1.5 (not clipped): loss (-1.2 + 1.5) / 2 = 0.15, clip fraction 0.5. A third, padded
    token with a huge advantage changes nothing."""
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    new = old + math.log(1.5)
    loss, stats = policy_loss(new, old, torch.tensor([[1.0, -1.0, 100.0]]), torch.tensor([[True, True, False]]), 0.2)
    clip_frac, approx_kl, ratio = stats.tolist()
    assert loss.item() == pytest.approx(0.15)
    assert clip_frac == pytest.approx(0.5)
    assert approx_kl == pytest.approx(0.5 * math.log(1.5) ** 2)
    assert ratio == pytest.approx(1.5)


def test_shares_of_a_minibatch_add_up_to_its_loss() -> None:
    """What N processes do with one minibatch: each takes some rows and divides by the whole minibatch's token
    count; the shares' losses and statistics add up to the one-process values."""
    torch.manual_seed(0)
    new, old, adv = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]).bool()
    whole, whole_stats = policy_loss(new, old, adv, mask, 0.2)
    count, halves = float(mask.sum()), (slice(0, 2), slice(2, 4))
    shares = [policy_loss(new[r], old[r], adv[r], mask[r], 0.2, count) for r in halves]
    assert sum(s[0] for s in shares).item() == pytest.approx(whole.item())
    assert torch.allclose(sum(s[1] for s in shares), whole_stats)
    value_whole, _ = value_loss(new, old, adv, mask, 0.2)
    value_shares = [value_loss(new[r], old[r], adv[r], mask[r], 0.2, count)[0] for r in halves]
    assert sum(value_shares).item() == pytest.approx(value_whole.item())


def test_value_loss_hand_worked() -> None:
    """clip 0.2. V = 2, V_old = 1, R = 1.5: V_clipped = 1.2, max(0.25, 0.09) = 0.25 (unclipped).
    V = 1, V_old = 2, R = 0: V_clipped = 1.8, max(1, 3.24) = 3.24 (clipped).
    loss = 0.5 * (0.25 + 3.24) / 2 = 0.8725, clipped fraction 0.5."""
    loss, frac = value_loss(
        torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([[1.5, 0.0]]), torch.ones(1, 2), 0.2
    )
    assert loss.item() == pytest.approx(0.8725)
    assert frac.item() == pytest.approx(0.5)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_ppo_steps_move_actor_and_critic_and_log_kl(tmp_path: Path, tiny_model: Path) -> None:
    cfg = PPOConfig(
        rollout_batch_size=4,
        minibatch_size=2,
        ppo_epochs=2,
        max_new_tokens=8,
        learning_rate=1e-3,
        critic_learning_rate=1e-3,
        kl_control="adaptive",
        init_kl_coef=0.1,
        kl_horizon=100,
        precision="fp32",
    )
    trainer = PPOTrainer(cfg, str(tiny_model), LengthReward())
    actor, critic = _params(trainer.actor), _params(trainer.critic)
    rows = trainer.train(PROMPTS, 3, tmp_path / "log.jsonl")

    assert read_jsonl(tmp_path / "log.jsonl") == rows and len(rows) == 3
    for row in rows:
        assert LOG_FIELDS <= row.keys()
        assert all(v is None or math.isfinite(v) for v in row.values())
    assert trainer.optimizer_steps == 3 * 2 * 2
    # The first rollout comes from the reference itself: KL 0; after two updates the policy has moved away.
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert rows[2]["kl"] != pytest.approx(0.0, abs=1e-5) and rows[2]["approx_kl"] > 0
    assert rows[0]["kl_coef"] == 0.1 and rows[1]["kl_coef"] != 0.1  # adapted towards the target
    for name, before in actor.items():
        if "norm" in name:
            continue
        assert not torch.equal(before, trainer.actor.get_parameter(name)), f"actor {name} did not change"
    for name, before in critic.items():
        if "norm" in name:
            continue
        assert not torch.equal(before, trainer.critic.get_parameter(name)), f"critic {name} did not change"
    reference = dict(trainer.reference.named_parameters())
    assert all(torch.equal(actor[k], reference[k]) for k in actor)  # the reference stays frozen


def _constant_reward_trainer(tiny_model: Path, critic_value: float) -> PPOTrainer:
    """Constant reward 1, no KL penalty, no scaling or whitening, gamma = lam = 1, one minibatch: every
    response token's return is exactly 1. The critic's head is set to output `critic_value` everywhere."""
    cfg = PPOConfig(
        rollout_batch_size=4,
        minibatch_size=4,
        ppo_epochs=1,
        max_new_tokens=6,
        learning_rate=1e-3,
        critic_learning_rate=1e-3,
        kl_control="fixed",
        init_kl_coef=0.0,
        reward_normalize=False,
        reward_clip=None,
        advantage_normalize=False,
        gamma=1.0,
        lam=1.0,
        precision="fp32",
    )
    trainer = PPOTrainer(cfg, str(tiny_model), ConstantReward(1.0))
    with torch.no_grad():
        trainer.critic.head.weight.zero_()
        trainer.critic.head.bias.fill_(critic_value)
    return trainer


def test_perfect_critic_gives_zero_advantages_and_zero_policy_loss(tiny_model: Path) -> None:
    """V = 1 = the return everywhere: delta_t = 0 + 1 - 1 = 0 before the last token and 1 + 0 - 1 = 0 on it,
    so A = 0, the policy loss is exactly 0 and the actor's weights do not move."""
    trainer = _constant_reward_trainer(tiny_model, critic_value=1.0)
    before = _params(trainer.actor)
    traj = trainer.generate_trajectory(PROMPTS)
    assert traj.returns[traj.response_mask].tolist() == pytest.approx([1.0] * int(traj.response_mask.sum()))
    assert traj.advantages.abs().max().item() == pytest.approx(0.0, abs=1e-6)
    stats = trainer.ppo_step(traj)
    assert stats.policy_loss == pytest.approx(0.0, abs=1e-6)
    assert stats.value_loss == pytest.approx(0.0, abs=1e-10)
    assert all(torch.equal(before[k], v) for k, v in trainer.actor.named_parameters())


def test_zero_critic_gives_advantage_one_and_policy_loss_minus_one(tiny_model: Path) -> None:
    """The same rollout setting with V = 0: A_t = sum of later rewards - V_t = 1 on every token; the first
    (only) minibatch has ratio 1, so the policy loss is -A * 1 = -1; the value loss is 0.5 * (0 - 1)^2 = 0.5."""
    trainer = _constant_reward_trainer(tiny_model, critic_value=0.0)
    traj = trainer.generate_trajectory(PROMPTS)
    assert traj.advantages[traj.response_mask].tolist() == pytest.approx([1.0] * int(traj.response_mask.sum()))
    stats = trainer.ppo_step(traj)
    assert stats.policy_loss == pytest.approx(-1.0, abs=1e-4)
    assert stats.ratio == pytest.approx(1.0, abs=1e-4) and stats.clip_frac == 0.0
    assert stats.value_loss == pytest.approx(0.5, abs=1e-6)


def test_lora_actor_is_merged_into_the_saved_policy(tmp_path: Path, tiny_model: Path) -> None:
    from safetensors.torch import load_file

    cfg = PPOConfig(
        rollout_batch_size=2, minibatch_size=2, max_new_tokens=6, learning_rate=1e-2, lora=True, precision="fp32"
    )
    trainer = PPOTrainer(cfg, str(tiny_model), LengthReward())
    trainer.train(PROMPTS, 2)
    trainer.save_policy(tmp_path / "model")
    after = load_file(tmp_path / "model" / "model.safetensors")
    before = load_file(tiny_model / "model.safetensors")
    assert not any("lora" in k for k in after) and after.keys() == before.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_cli_ppo_with_judge_reward_writes_model_log_and_metrics(tmp_path: Path, tiny_model: Path) -> None:
    run = RunPaths(tmp_path / "tiny")
    run.iteration(1).root.mkdir(parents=True)
    rows = [{"prompt_id": f"i1-p{i}", "text": p, "source": "self-instruct"} for i, p in enumerate(PROMPTS)]
    run.iteration(1).prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run(
        [sys.executable, "-m", "selfreward", "ppo", "--config", "configs/tiny.yaml"]
        + [f"output_dir={tmp_path}", "seed_sft=false"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    paths = run.ppo
    assert (paths.model / "model.safetensors").exists() and (paths.model / "tokenizer.json").exists()
    assert json.loads((paths.model / "config.json").read_text())["dtype"] == "float32"
    log = read_jsonl(paths.log)
    assert len(log) == 2 and all(LOG_FIELDS <= row.keys() for row in log)
    assert all(-1.0 <= row["reward_raw"] <= 1.0 for row in log)  # judge scores 0-5 mapped to -1..1
    metrics = json.loads(paths.metrics.read_text())
    assert metrics["steps"] == metrics["rollouts"] == 2 and metrics["responses"] == 8
    assert metrics["wall_s"] > 0 and metrics["peak_rss_gib"] > 0 and metrics["reward"] == "judge"
    assert load_config(paths.config).ppo.steps == 2


def test_cli_ppo_errors_are_one_line(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "selfreward", "ppo", "--config", "configs/tiny.yaml", f"output_dir={tmp_path}"]
    missing = subprocess.run(base, cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2
    assert "iter_1/prompts.jsonl" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    wrong = subprocess.run([*base, "--pairs-from", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert wrong.returncode == 2 and "ppo.reward=model" in wrong.stderr


def test_cli_ppo_bad_input_in_its_training_child_is_still_one_line(tmp_path: Path, tiny_model: Path) -> None:
    """The reward model's pairs are read in the training child: their absence is the parent's one-line error
    (exit 2), not a traceback of the child."""
    run = RunPaths(tmp_path / "tiny")
    run.iteration(1).root.mkdir(parents=True)
    run.iteration(1).prompts.write_text(
        "".join(json.dumps({"prompt_id": f"p{i}", "text": p}) + "\n" for i, p in enumerate(PROMPTS))
    )
    empty = tmp_path / "no_pairs" / "iter_1"
    empty.mkdir(parents=True)
    cmd = [sys.executable, "-m", "selfreward", "ppo", "--config", "configs/tiny.yaml", f"model={tiny_model}"]
    cmd += [f"output_dir={tmp_path}", "seed_sft=false", "ppo.reward=model", "--pairs-from", str(empty)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert str(empty) in last and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_the_ppo_trainer_starts_after_a_bf16_trainer_in_the_same_process(tiny_model: Path) -> None:
    """`selfreward ppo` trains the reward model (TRL, bf16 where native) and then PPO in one child: accelerate's
    shared state, left at bf16, must not stop the PPO trainer's own (precision is PPO's autocast)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # as a fresh child process: no state yet, then a bf16 trainer's
    Accelerator(cpu=True, mixed_precision="bf16")
    trainer = PPOTrainer(PPOConfig(precision="fp32"), str(tiny_model), ConstantReward(0.0))
    assert trainer.accelerator.mixed_precision == "no" and trainer.world == 1


def test_run_ppo_with_a_reward_model_from_pairs(tmp_path: Path, tiny_model: Path) -> None:
    from tests.test_rewards import make_pairs

    it = tmp_path / "pairs_run" / "iter_2"
    make_pairs(it / "pairs", 4)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS))
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [f"output_dir={tmp_path}", "seed_sft=false", "ppo.reward=model", "ppo.steps=1", "ppo.rm_epochs=1"],
    )
    paths = run_ppo(cfg, str(prompts), str(it))
    assert (paths.reward_model / "model.safetensors").exists() and read_jsonl(paths.reward_model_log)
    metrics = json.loads(paths.metrics.read_text())
    assert metrics["reward_model"]["pairs"] == 4 and metrics["reward_model"]["pairs_from"] == str(it)
    assert (paths.model / "model.safetensors").exists() and len(read_jsonl(paths.log)) == 1
    # Re-running with the same settings trains nothing; other settings need --force, which retrains.
    stamp = paths.log.stat().st_mtime_ns
    assert run_ppo(cfg, str(prompts), str(it)) == paths and paths.log.stat().st_mtime_ns == stamp
    longer = load_config(
        ROOT / "configs" / "tiny.yaml",
        [f"output_dir={tmp_path}", "seed_sft=false", "ppo.reward=model", "ppo.steps=2", "ppo.rm_epochs=1"],
    )
    with pytest.raises(ConfigError, match=r"ppo was trained with other settings.*--force"):
        run_ppo(longer, str(prompts), str(it))
    run_ppo(longer, str(prompts), str(it), force=True)
    assert len(read_jsonl(paths.log)) == 2 and json.loads(paths.metrics.read_text())["steps"] == 2


def test_shares_of_rollouts_and_minibatches_must_divide_among_the_processes() -> None:
    from selfreward.baselines.ppo import check_shares

    check_shares(PPOConfig(rollout_batch_size=8, minibatch_size=4), 2)
    check_shares(PPOConfig(rollout_batch_size=6, minibatch_size=4), 1)  # one process: a short last minibatch
    for sizes, processes, match in (
        ((8, 3), 2, r"ppo.minibatch_size=3 is not divisible by the 2 processes"),
        ((6, 2), 4, r"ppo.rollout_batch_size=6 is not divisible by the 4 processes"),
        ((12, 8), 2, r"rollout_batch_size=12 is not a multiple of ppo.minibatch_size=8"),
    ):
        with pytest.raises(ConfigError, match=match):
            check_shares(PPOConfig(rollout_batch_size=sizes[0], minibatch_size=sizes[1]), processes)
