"""Rewards and advantages for PPO (`selfreward ppo`): small pure functions and the two reward sources.

Tensors are (B, T): B responses, T response tokens, right-padded; `mask` is True on a response's
tokens (its end-of-sequence token included) and False on padding.

- `masked_mean`, `masked_var`, `whiten`: statistics over the response tokens only.
- `kl_penalized_rewards`: per-token reward = -kl_coef * (log pi - log pi_ref), plus the sequence
  score on the response's last token (Ziegler et al. 2019; Stiennon et al. 2020).
- `gae`: generalised advantage estimation (Schulman et al. 2016) and the returns.
- `RunningMeanStd`, `RewardScaler`: ICE-GRT's reward scaling (running mean/std, a scale factor) and
  reward clipping.
- `AdaptiveKLController`, `FixedKLController`: KL control.
- `JudgeReward`: the judge (`judge.judge_texts`, the loop's one judge code path) scores each
  (prompt, response); `ModelReward`: a reward model trained by `train_reward_model` (TRL's
  RewardTrainer on an iteration's `pairs/`).

Reads  (train_reward_model) iter_K/pairs/ (datasets on disk, TRL conversational preference format)
Writes (train_reward_model) the reward model folder (fp32 safetensors + tokenizer) and its trainer log
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfreward.artifacts import DataError, atomic_path, write_jsonl
from selfreward.config import JudgeConfig, PPOConfig, train_bf16
from selfreward.judge import judge_texts

if TYPE_CHECKING:
    import torch

    from selfreward.generation import Generator

log = logging.getLogger(__name__)


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
    import torch

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
    import torch

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
    import torch

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


# --------------------------------------------------------------------------- reward sources


class RewardFunction:
    """Scores (prompt, response) pairs with one scalar each; `unscored` is the number of responses of the
    last call that got a penalty instead of a score."""

    unscored: int = 0

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        raise NotImplementedError


class JudgeReward(RewardFunction):
    """The loop's judge as a reward: `judge_texts` (K samples averaged, 0-5), then
    (score - center) / scale; a response with no parsed sample gets `unscored_penalty` and is logged."""

    def __init__(
        self,
        gen: Generator,
        cfg: JudgeConfig,
        center: float = 2.5,
        scale: float = 2.5,
        unscored_penalty: float = -1.0,
        seed: int = 0,
    ) -> None:
        self.gen, self.cfg = gen, cfg
        self.center, self.scale, self.unscored_penalty = center, scale, unscored_penalty
        self.seed = seed
        self.calls = 0

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        # A new seed per call: the K judge samples of a response are fresh draws each rollout.
        judgements = judge_texts(
            self.gen, self.cfg, list(zip(prompts, responses, strict=True)), seed=self.seed + self.calls
        )
        self.calls += 1
        rewards = [
            self.unscored_penalty if j.score is None else (j.score - self.center) / self.scale for j in judgements
        ]
        self.unscored = sum(j.score is None for j in judgements)
        if self.unscored:
            log.warning(
                "judge reward: %d of %d responses unscored (no judge sample parsed); reward %s",
                self.unscored,
                len(judgements),
                self.unscored_penalty,
            )
        return rewards


def chat_ids(tokenizer: Any, prompt: str, response: str) -> list[int]:
    """Token ids of the (user prompt, assistant response) conversation, as RewardTrainer tokenises a pair."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]


class ModelReward(RewardFunction):
    """A sequence-classification reward model (num_labels=1): its output on the last token of the
    conversation is the reward. Conversations longer than `max_length` keep their last tokens."""

    def __init__(self, path: str | Path, max_length: int = 512, batch_size: int = 8) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        self.model.eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.max_length, self.batch_size = max_length, batch_size

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        import torch

        pad = self.model.config.pad_token_id
        ids = [chat_ids(self.tokenizer, p, r)[-self.max_length :] for p, r in zip(prompts, responses, strict=True)]
        rewards: list[float] = []
        for i in range(0, len(ids), self.batch_size):
            batch = ids[i : i + self.batch_size]
            width = max(len(x) for x in batch)
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch], device=self.device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
            rewards += logits[:, 0].float().tolist()
        self.unscored = 0
        return rewards


def train_reward_model(
    cfg: PPOConfig, base_model: str, pairs_dir: Path, out: Path, log_path: Path, seed: int = 0
) -> dict:
    """Train a reward model (AutoModelForSequenceClassification, num_labels=1, on `base_model`'s backbone)
    with TRL's RewardTrainer on the pairs dataset `pairs_dir` (an iteration's `pairs/`); writes it to `out`
    (fp32 safetensors + tokenizer) and the trainer log to `log_path`. Returns its metrics."""
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    if not (Path(pairs_dir) / "dataset_info.json").exists():
        raise DataError(f"{pairs_dir}: not a pairs dataset (run the loop's pairs stage first, or pass --pairs-from)")
    # Only the conversation: a `margin` column would turn RewardTrainer's loss into the margin loss.
    dataset = datasets.load_from_disk(str(pairs_dir)).select_columns(["prompt", "chosen", "rejected"])
    if len(dataset) == 0:
        raise DataError(f"{pairs_dir}: no pairs to train a reward model on")
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    on_gpu = torch.cuda.is_available()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reward-model-", dir=Path(out).parent) as scratch:
        args = RewardConfig(
            output_dir=scratch,
            learning_rate=cfg.rm_learning_rate,
            num_train_epochs=cfg.rm_epochs,
            per_device_train_batch_size=cfg.rm_batch_size,
            max_length=cfg.rm_max_length,
            bf16=train_bf16(cfg.precision),
            use_cpu=not on_gpu,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=seed,
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        used = len(trainer.train_dataset)
        if used == 0:
            raise DataError(f"{pairs_dir}: every pair is longer than ppo.rm_max_length={cfg.rm_max_length}")
        result = trainer.train()
        with atomic_path(out) as tmp:
            trainer.model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        write_jsonl(log_path, trainer.state.log_history)
    steps = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "pairs": len(dataset),
        "pairs_used": used,
        "steps": len(steps),
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
        "last_accuracy": steps[-1].get("accuracy") if steps else None,
        "train_runtime_s": result.metrics.get("train_runtime"),
    }
