"""Reward sources for the RL baselines (`selfreward ppo`): each scores (prompt, response) pairs with
one scalar. The maths that turns those scalars into advantages is in `rl_math`.

- `JudgeReward`: the judge (`judge.judge_texts`, the loop's one judge code path) scores each
  (prompt, response); `ModelReward`: a reward model trained by `train_reward_model` (TRL's
  RewardTrainer on an iteration's `pairs/`, or on verifier-labelled answers: `selfreward reason`'s
  outcome reward model); `VerifierReward`: on problems with checkable answers, 1 for a response whose
  final answer is the reference and 0 otherwise (Havrilla et al.'s sparse reward), every response's
  verdict recorded.

Reads  (train_reward_model) iter_K/pairs/ (datasets on disk, TRL conversational preference format)
Writes (train_reward_model) the reward model folder (fp32 safetensors + tokenizer) and its trainer log
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfreward.artifacts import DataError, write_jsonl
from selfreward.cards import Lineage, model_card
from selfreward.config import ConfigError, JudgeConfig, PPOConfig, train_bf16
from selfreward.launch import per_process_accumulation
from selfreward.loop.dpo import chat_ids as conversation_ids
from selfreward.loop.judge import judge_texts
from selfreward.models import save_trained
from selfreward.reason.verifier import verify
from selfreward.tracking import Tracker

if TYPE_CHECKING:
    from selfreward.generation import Generator

log = logging.getLogger(__name__)


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
    return conversation_ids(
        tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    )


class ModelReward(RewardFunction):
    """A sequence-classification reward model (num_labels=1): its output on the last token of the
    conversation is the reward. Conversations longer than `max_length` keep their last tokens.

    It runs in bf16 where `precision` says so (`auto`: where bf16 is native, as the reward model was trained),
    on batches of conversations of similar length (sorted, then returned in the caller's order): measured on
    96 conversations of ~100 tokens on a 2-core CPU with AMX, 12.4 s fp32 unsorted vs 3.5 s bf16 sorted."""

    def __init__(self, path: str | Path, max_length: int = 512, batch_size: int = 8, precision: str = "auto") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = torch.bfloat16 if train_bf16(precision) else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, use_safetensors=True)
        self.model.eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.max_length, self.batch_size = max_length, batch_size

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        import torch

        pad = self.model.config.pad_token_id
        ids = [chat_ids(self.tokenizer, p, r)[-self.max_length :] for p, r in zip(prompts, responses, strict=True)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        rewards = [0.0] * len(ids)
        for i in range(0, len(order), self.batch_size):
            rows = order[i : i + self.batch_size]
            batch = [ids[j] for j in rows]
            width = max(len(x) for x in batch)
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch], device=self.device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
            for j, value in zip(rows, logits[:, 0].float().tolist(), strict=True):
                rewards[j] = value
        self.unscored = 0
        return rewards


class VerifierReward(RewardFunction):
    """The verifier as a reward: 1.0 for a response whose final answer reads as its problem's reference
    answer, else 0.0. `references` maps each prompt (as the policy sees it) to (problem_id, answer).

    Every response it is given is appended to `rows` ({problem_id, index, text, correct, predicted, reason}:
    no finish reason or token count, which the reward function is not given), so the rollouts are kept as
    verified samples. With `reward_model` (e.g. an outcome reward model) the reward is
    that model's score instead and the verifier only records."""

    def __init__(self, references: dict[str, tuple[str, str]], reward_model: RewardFunction | None = None) -> None:
        self.references, self.reward_model = references, reward_model
        self.rows: list[dict[str, Any]] = []
        self._seen: Counter[str] = Counter()

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        verdicts = []
        for prompt, response in zip(prompts, responses, strict=True):
            if prompt not in self.references:
                raise ValueError(f"verifier reward: no reference answer for the prompt {prompt[:60]!r}")
            problem_id, answer = self.references[prompt]
            v = verify(response, answer)
            verdicts.append(v.correct)
            self.rows.append(
                {
                    "problem_id": problem_id,
                    "index": self._seen[problem_id],
                    "text": response,
                    "correct": v.correct,
                    "predicted": v.predicted,
                    "reason": v.reason,
                }
            )
            self._seen[problem_id] += 1
        if self.reward_model is not None:
            rewards = self.reward_model(prompts, responses)
            self.unscored = self.reward_model.unscored
            return rewards
        self.unscored = 0
        return [1.0 if ok else 0.0 for ok in verdicts]


def check_rm_batch(cfg: PPOConfig, processes: int) -> None:
    """`ppo.rm_batch_size` is the batch of a reward-model step over all processes, so it must divide among them."""
    if cfg.rm_batch_size % processes:
        raise ConfigError(
            f"ppo.rm_batch_size={cfg.rm_batch_size} is not divisible by launch.num_processes={processes}: "
            "the reward model's batch is shared among the processes"
        )


def train_reward_model(
    cfg: PPOConfig,
    base_model: str,
    pairs_dir: Path,
    out: Path,
    log_path: Path,
    seed: int = 0,
    tracker: Tracker | None = None,
    lineage: Lineage | None = None,
) -> dict:
    """Train a reward model (AutoModelForSequenceClassification, num_labels=1, on `base_model`'s backbone)
    with TRL's RewardTrainer on the pairs dataset `pairs_dir` (an iteration's `pairs/`); writes it to `out`
    (fp32 safetensors + tokenizer) and the trainer log to `log_path`. Returns its metrics.

    Under `accelerate launch` / torchrun every process calls it: `ppo.rm_batch_size` is the batch of one
    optimiser step over all of them (divided among them, so the steps are the same on 1 or N), the gathered
    weights are saved once (`models.save_trained`), and the main process writes the log."""
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    tracker = tracker or Tracker()
    lineage = lineage or Lineage(base_model, str(Path(out).parent), 0, base_model)

    if not (Path(pairs_dir) / "dataset_info.json").exists():
        raise DataError(f"{pairs_dir}: not a pairs dataset (run the loop's pairs stage first, or pass --pairs-from)")
    # Only the conversation: a `margin` column would turn RewardTrainer's loss into the margin loss.
    dataset = datasets.load_from_disk(str(pairs_dir)).select_columns(["prompt", "chosen", "rejected"])
    if len(dataset) == 0:
        raise DataError(f"{pairs_dir}: no pairs to train a reward model on")
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_seed(seed)  # the score head is initialised at random: the same head on every process and every re-run
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model, num_labels=1, dtype=torch.float32, use_safetensors=True
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    on_gpu = torch.cuda.is_available()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reward-model-", dir=Path(out).parent) as scratch:
        args = RewardConfig(
            output_dir=scratch,
            learning_rate=cfg.rm_learning_rate,
            num_train_epochs=cfg.rm_epochs,
            per_device_train_batch_size=per_process_accumulation(cfg.rm_batch_size, "ppo.rm_batch_size"),
            max_length=cfg.rm_max_length,
            bf16=train_bf16(cfg.precision),
            use_cpu=not on_gpu,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="no",
            seed=seed,
            **tracker.trainer_args("ppo/reward_model"),
        )
        with tracker.trainer_env("ppo/reward_model"):
            trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        used = len(trainer.train_dataset)
        if used == 0:
            raise DataError(f"{pairs_dir}: every pair is longer than ppo.rm_max_length={cfg.rm_max_length}")
        with tracker.trainer_env("ppo/reward_model"):  # wandb/MLflow read their project when training starts
            result = trainer.train()
        steps = [h for h in trainer.state.log_history if "loss" in h]
        summary = {"steps": len(steps), "last": steps[-1] if steps else None}
        data = {"pairs": str(pairs_dir), "pairs_used": used}
        card = model_card(lineage, "reward_model", {"ppo": dataclasses.asdict(cfg)}, data, summary)

        def extra(folder: Path) -> None:
            tokenizer.save_pretrained(folder)
            (folder / "README.md").write_text(card, encoding="utf-8")

        save_trained(trainer, Path(out), base_model, False, extra)
        acc = trainer.accelerator
        if acc.is_main_process:
            write_jsonl(log_path, trainer.state.log_history)
    return {
        "processes": acc.num_processes,
        "distributed_type": acc.distributed_type.value,
        "effective_batch": args.per_device_train_batch_size * acc.num_processes,
        "pairs": len(dataset),
        "pairs_used": used,
        "steps": len(steps),
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
        "last_accuracy": steps[-1].get("accuracy") if steps else None,
        "train_runtime_s": result.metrics.get("train_runtime"),
    }
