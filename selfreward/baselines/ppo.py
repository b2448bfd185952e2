"""PPO baseline in the style of ICE-GRT (Zheng et al. 2024): `selfreward ppo`.

Four models: the actor (the policy, AutoModelForCausalLM), a frozen reference (the starting policy),
a critic (the policy's transformer body + a linear value head, trained separately) and a reward
(`ppo.reward`): the loop's judge (`rewards.JudgeReward`) or a reward model trained with TRL's
RewardTrainer on an iteration's pairs (`rewards.ModelReward`). Each update:

1. `generate_trajectory`: sample one response per prompt with the actor's `generate` (batched, left
   padding); score it; per-token reward = -kl_coef * (log pi - log pi_ref), plus the (scaled, clipped)
   score on the last token; values from the critic; advantages and returns by GAE.
2. `ppo_step`: `ppo_epochs` passes over the rollout in minibatches: clipped policy loss on the actor,
   clipped value loss on the critic (each with its own AdamW).
3. `log_metrics`: one row of `ppo_log.jsonl`.

On N processes (`accelerate launch` / torchrun; DDP through accelerate, on CPUs with gloo) each process samples
and scores (log-probabilities, values) its own share of the rollout's prompts; the shares are gathered, the
main process scores the whole rollout with the reward function, and every process then shapes the same
rewards, advantages and returns. Each minibatch is divided among the processes with the loss normalised by the
whole minibatch's token count, so an update is the one-process update (checked in tests/test_distributed.py).
FSDP and DeepSpeed are refused: generation needs the whole actor on every process.

ICE-GRT's controls are config switches: reward scaling (`reward_normalize`, `reward_scale`), reward
clipping (`reward_clip`), KL control (`kl_control` fixed or adaptive, `kl_target`, `kl_horizon`) and
advantage normalisation (`advantage_normalize`).

The policy starts where the DPO loop's iteration 1 starts (M1 of the seed SFT, or `model` with
`seed_sft: false`), so the two can be compared.

Reads  iter_1/prompts.jsonl of the run (or --prompts FILE: JSONL with `text`); with `ppo.reward: model`
       iter_K/pairs/ (--pairs-from iterations/<run>/iter_K; default iter_1)
Writes iterations/<run>/ppo/: model/ (final policy, fp32 safetensors + tokenizer), ppo_log.jsonl,
       metrics.json (wall time, peak memory, steps, rollouts), config.yaml; with a reward model
       reward_model/ and reward_model_log.jsonl

    selfreward ppo --config configs/default.yaml [--prompts FILE] [--pairs-from iterations/<run>/iter_K] \
        [ppo.steps=32 ...]

`run_ppo` (the command) checks and records; the training (`train_policy`: the reward model, then PPO) runs in a
child process, `python -m selfreward.baselines.ppo`, on `launch.num_processes` processes (`ddp_launch`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfreward.artifacts import (
    DataError,
    IterPaths,
    PPOPaths,
    RunPaths,
    atomic_path,
    model_digest,
    read_json,
    write_json,
    write_jsonl,
    write_text,
)
from selfreward.baselines.rewards import JudgeReward, ModelReward, RewardFunction, check_rm_batch, train_reward_model
from selfreward.baselines.rl_math import (
    AdaptiveKLController,
    FixedKLController,
    RewardScaler,
    explained_variance,
    gae,
    kl_penalized_rewards,
    masked_mean,
    whiten,
)
from selfreward.cards import Lineage, model_card
from selfreward.config import ConfigError, PPOConfig, RunConfig, dump_yaml, fingerprint, train_bf16
from selfreward.generation import open_generator
from selfreward.inputs import load_prompt_file
from selfreward.launch import is_main_process, stage_main, stage_parser, stage_setup, train
from selfreward.models import lora_config, model_of_iteration, resolve_model
from selfreward.runs import PeakMemory, manifest, open_run
from selfreward.tracking import Tracker, flatten

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- records


@dataclass
class Trajectory:
    """One rollout. Shapes: B responses, P prompt positions (left-padded), R response positions
    (right-padded: after a response's end-of-sequence token come padding positions)."""

    prompts: list[str]
    responses: list[str]
    """Decoded response texts (up to the end-of-sequence token, special tokens skipped)."""
    input_ids: torch.Tensor
    """(B, P + R) prompt then response token ids."""
    attention_mask: torch.Tensor
    """(B, P + R) 1 on prompt tokens and on response tokens up to and including the end-of-sequence token."""
    position_ids: torch.Tensor
    """(B, P + R) positions counted over the attended tokens (left padding does not shift them)."""
    response_mask: torch.Tensor
    """(B, R) bool: True on a response's tokens, its end-of-sequence token included."""
    ended: torch.Tensor
    """(B,) bool: the response ended with an end-of-sequence token (False: cut at max_new_tokens)."""
    logprobs: torch.Tensor
    """(B, R) log pi_old(y_t) of the actor at the rollout, from logits / temperature."""
    ref_logprobs: torch.Tensor
    """(B, R) log pi_ref(y_t) of the frozen reference."""
    entropy: torch.Tensor
    """(B, R) entropy of the actor's next-token distribution at each response position."""
    values: torch.Tensor
    """(B, R) critic's value of the state before each response token."""
    raw_scores: torch.Tensor
    """(B,) reward of each response as the reward function gave it."""
    scores: torch.Tensor
    """(B,) after reward scaling and clipping: what is added on the last token."""
    kl: torch.Tensor
    """(B, R) per-token KL estimate log pi_old - log pi_ref (0 on padding)."""
    kl_coef: float
    rewards: torch.Tensor
    """(B, R) per-token rewards: -kl_coef * kl, plus the score on the last token."""
    advantages: torch.Tensor
    """(B, R) GAE advantages (whitened when `advantage_normalize`), 0 on padding."""
    returns: torch.Tensor
    """(B, R) advantages (before whitening) + values: the critic's targets."""
    unscored: int = 0
    """Responses the reward function could not score (given its penalty)."""
    seconds: float = 0.0


@dataclass
class PPOStats:
    """Means over the minibatches of one `ppo_step`."""

    policy_loss: float
    value_loss: float
    clip_frac: float
    """Fraction of response tokens whose policy ratio was clipped."""
    value_clip_frac: float
    """Fraction of response tokens whose clipped value loss was the larger."""
    approx_kl: float
    """0.5 * (log pi - log pi_old)^2: how far the epochs moved the policy from the rollout's."""
    ratio: float
    optimizer_steps: int
    seconds: float


# --------------------------------------------------------------------------- losses


def _token_mean(x: torch.Tensor, mask: torch.Tensor, count: float | None) -> torch.Tensor:
    """Sum of `x` over the masked tokens / `count` (default: the masked tokens here): the mean over a minibatch
    of which these tokens are one process's share."""
    if count is None:
        return masked_mean(x, mask)
    return (x * mask.to(x.dtype)).sum() / max(count, 1.0)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    count: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate (Schulman et al. 2017): mean over tokens of max(-A r, -A clip(r, 1 +- eps)),
    r = exp(logprobs - old_logprobs). Returns (loss, detached [clip fraction, approx KL, mean ratio]).
    Means are over `count` tokens (default: the masked ones; a process's share of a minibatch passes the
    minibatch's count, and the shares' results add up to the minibatch's).

    r = 1.5 on two tokens, advantages [1, -1], eps 0.2: token losses max(-1.5, -1.2) = -1.2 (clipped)
    and max(1.5, 1.2) = 1.5 (not clipped): loss (-1.2 + 1.5) / 2 = 0.15, clip fraction 0.5.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    loss = _token_mean(torch.maximum(unclipped, clipped), mask, count)
    stats = [(clipped > unclipped).float(), 0.5 * log_ratio.detach() ** 2, ratio.detach()]
    return loss, torch.stack([_token_mean(x, mask, count) for x in stats])


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    count: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean over tokens of max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clip(V - V_old, +- eps).
    Returns (loss, detached fraction of tokens where the clipped term was the larger); `count` as in
    `policy_loss`.

    V = 2, V_old = 1, R = 1.5, eps 0.2: V_clipped = 1.2, max(0.25, 0.09) = 0.25, loss 0.125, fraction 0.
    V = 1, V_old = 2, R = 0: V_clipped = 1.8, max(1, 3.24) = 3.24, loss 1.62, fraction 1.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange, cliprange)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * _token_mean(torch.maximum(unclipped_loss, clipped_loss), mask, count)
    return loss, _token_mean((clipped_loss > unclipped_loss).float(), mask, count).detach()


# --------------------------------------------------------------------------- models


class ValueModel(nn.Module):
    """The critic: the policy's transformer body (AutoModel, no LM head) + a linear head giving one value
    per position."""

    def __init__(self, path: str) -> None:
        from transformers import AutoModel

        super().__init__()
        self.body = AutoModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
        hidden = self.body.config.get_text_config().hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """(B, L) values."""
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.head(hidden).squeeze(-1).float()


# --------------------------------------------------------------------------- the trainer


def check_shares(cfg: PPOConfig, processes: int) -> None:
    """On N processes each takes an equal share of every rollout and of every minibatch, so both sizes must be
    multiples of N and the rollout a whole number of minibatches."""
    if processes == 1:
        return
    for key, size in (("rollout_batch_size", cfg.rollout_batch_size), ("minibatch_size", cfg.minibatch_size)):
        if size % processes:
            raise ConfigError(f"ppo.{key}={size} is not divisible by the {processes} processes: choose a multiple")
    if cfg.rollout_batch_size % cfg.minibatch_size:
        raise ConfigError(
            f"ppo.rollout_batch_size={cfg.rollout_batch_size} is not a multiple of ppo.minibatch_size="
            f"{cfg.minibatch_size}: on {processes} processes every minibatch is divided among them"
        )


class PPOTrainer:
    """Actor, reference, critic and a reward function; `generate_trajectory`, `ppo_step`, `log_metrics`."""

    def __init__(self, cfg: PPOConfig, policy_path: str, reward_fn: RewardFunction | None, seed: int = 0) -> None:
        """`reward_fn` is called on the main process only (with the whole rollout); the others may pass None."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedType, InitProcessGroupKwargs
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed)
        self.cfg, self.policy_path, self.reward_fn, self.seed = cfg, policy_path, reward_fn, seed
        # Precision is ours (`autocast`), not accelerate's: a TRL trainer earlier in this process (the reward
        # model's, in bf16) leaves accelerate's shared state at its mixed precision, which a new Accelerator may
        # not change, so that state is reset (the process group stays). cpu=True on a machine without a GPU is
        # what makes accelerate see torchrun's processes (MULTI_CPU, gloo) instead of one. The other processes
        # wait in a collective while the main one gives the rewards (a judge engine, a reward model): 1 h.
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision="no",
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=1))],
        )
        kind = self.accelerator.distributed_type
        if kind not in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
            raise ConfigError(
                f"ppo trains with DDP (every process generates with the whole actor); {kind.value} is not supported "
                "for it: leave launch.fsdp off and give no FSDP/DeepSpeed accelerate config to PPO"
            )
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        check_shares(cfg, self.world)
        self.device = self.accelerator.device
        self.bf16 = train_bf16(cfg.precision)
        self.tokenizer = AutoTokenizer.from_pretrained(policy_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

        self.actor = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32, use_safetensors=True)
        self.reference = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32, use_safetensors=True)
        self.reference.requires_grad_(False)
        if cfg.lora:
            from peft import get_peft_model

            lora = lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
            self.actor = get_peft_model(self.actor, lora)
        self.critic = ValueModel(policy_path)
        # eval(): no dropout anywhere, so the rollout's log-probs and the update's agree; gradients still flow.
        for model in (self.actor, self.reference, self.critic):
            model.to(self.device)
            model.eval()
        eos = self.actor.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = sorted({i for i in [*eos, self.tokenizer.eos_token_id] if i is not None})
        self.actor_opt = torch.optim.AdamW(
            [p for p in self.actor.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=0.0
        )
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_learning_rate, weight_decay=0.0)
        # DDP on N processes (rank 0's initial weights broadcast to all); the same models on one
        self.actor, self.actor_opt = self.accelerator.prepare(self.actor, self.actor_opt)
        self.critic, self.critic_opt = self.accelerator.prepare(self.critic, self.critic_opt)
        if self.world > 1:  # each process samples its own share of a rollout: its own random stream
            torch.manual_seed(seed + 7919 * self.rank)
        if cfg.kl_control == "adaptive":
            self.kl_ctl: FixedKLController | AdaptiveKLController = AdaptiveKLController(
                cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon
            )
        else:
            self.kl_ctl = FixedKLController(cfg.init_kl_coef)
        self.scaler = RewardScaler(cfg.reward_normalize, cfg.reward_scale, cfg.reward_clip)
        self.step = 0
        self.optimizer_steps = 0

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def policy(self) -> nn.Module:
        """The actor itself (outside DDP's wrapper): for sampling, scoring without gradients and saving."""
        return self.accelerator.unwrap_model(self.actor)

    def encode_prompt(self, prompt: str) -> list[int]:
        """The prompt as a user turn of the chat template with the assistant turn opened."""
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def response_logprobs(
        self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, R: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R) log-probabilities of the last R tokens under `model` (logits / temperature) and the
        (B, R) entropies of those next-token distributions."""
        with self.autocast():
            logits = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                logits_to_keep=R + 1,
                use_cache=False,
            ).logits
        logp = torch.log_softmax(logits[:, :-1].float() / self.cfg.temperature, dim=-1)
        logprobs = logp.gather(-1, input_ids[:, -R:].unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return logprobs, entropy

    def response_values(
        self, critic: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, R: int
    ) -> torch.Tensor:
        """(B, R) the critic's value of the state before each of the last R tokens."""
        with self.autocast():
            return critic(input_ids, attention_mask, position_ids)[:, -R - 1 : -1].float()

    def sample(self, prompts: list[str]) -> tuple[list[list[int]], torch.Tensor]:
        """The prompts' token ids and (B, P + R) the actor's samples: each prompt left-padded to the longest
        (P), then its response (up to `max_new_tokens`, right-padded after its end-of-sequence token)."""
        ids = [self.encode_prompt(p) for p in prompts]
        P = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        query = torch.tensor([[pad] * (P - len(x)) + x for x in ids], device=self.device)
        query_mask = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in ids], device=self.device)
        with torch.no_grad(), self.autocast():
            out = self.policy().generate(
                input_ids=query,
                attention_mask=query_mask,
                max_new_tokens=self.cfg.max_new_tokens,
                do_sample=True,
                temperature=self.cfg.temperature,
                top_k=0,
                top_p=1.0,
                pad_token_id=pad,
                eos_token_id=self.eos_ids,
            )
        return ids, out

    def sample_share(self, prompts: list[str]) -> list[dict[str, Any]]:
        """Sample one response to each of `prompts` (this process's share of a rollout) and score it without
        gradients: per response its prompt and response token ids (up to and including the end-of-sequence
        token), the actor's and the reference's log-probabilities, the entropies and the critic's values of
        those tokens, whether it ended, and its text."""
        ids, out = self.sample(prompts)
        P = max(len(x) for x in ids)
        query_mask = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in ids], device=self.device)
        response = out[:, P:]
        R = response.shape[1]
        is_eos = torch.isin(response, torch.tensor(self.eos_ids, device=self.device))
        response_mask = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # up to and including the first EOS
        ended = is_eos.any(1)
        attention_mask = torch.cat([query_mask, response_mask.long()], dim=1)
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            logprobs, entropy = self.response_logprobs(self.policy(), out, attention_mask, position_ids, R)
            ref_logprobs, _ = self.response_logprobs(self.reference, out, attention_mask, position_ids, R)
            critic = self.accelerator.unwrap_model(self.critic)
            values = self.response_values(critic, out, attention_mask, position_ids, R)
        rows = []
        for b, prompt_ids in enumerate(ids):
            n = int(response_mask[b].sum())
            text_ids = response[b, : n - int(ended[b])].tolist()
            rows.append(
                {
                    "prompt_ids": prompt_ids,
                    "response_ids": response[b, :n].tolist(),
                    "ended": bool(ended[b]),
                    "text": self.tokenizer.decode(text_ids, skip_special_tokens=True),
                    **{
                        k: v[b, :n].cpu()
                        for k, v in (
                            ("logprobs", logprobs),
                            ("ref_logprobs", ref_logprobs),
                            ("entropy", entropy),
                            ("values", values),
                        )
                    },
                }
            )
        return rows

    def generate_trajectory(self, prompts: list[str]) -> Trajectory:
        """Sample one response per prompt, score it, and compute rewards, values, advantages and returns.

        On N processes each samples a contiguous share of `prompts`, the shares are gathered in order, the main
        process scores every response, and every process shapes the same rewards from the whole rollout."""
        from accelerate.utils import broadcast_object_list, gather_object

        start = time.perf_counter()
        share = len(prompts) // self.world
        rows = self.sample_share(prompts[self.rank * share : (self.rank + 1) * share])
        if self.world > 1:
            rows = gather_object(rows)
        texts = [row["text"] for row in rows]
        scored: list[Any] = [None, 0]
        if self.accelerator.is_main_process:
            raw = self.reward_fn(prompts, texts)
            if len(raw) != len(prompts):
                raise ValueError(f"the reward function returned {len(raw)} rewards for {len(prompts)} responses")
            scored = [list(raw), self.reward_fn.unscored]
        if self.world > 1:
            broadcast_object_list(scored)
        raw, unscored = scored
        batch = self.batch(rows)
        response_mask = batch["response_mask"]
        scores = torch.tensor(self.scaler(raw), dtype=torch.float32, device=self.device)
        kl_coef = self.kl_ctl.value
        rewards, kl = kl_penalized_rewards(scores, batch["logprobs"], batch["ref_logprobs"], response_mask, kl_coef)
        advantages, returns = gae(rewards, batch["values"], response_mask, self.cfg.gamma, self.cfg.lam)
        if self.cfg.advantage_normalize:
            advantages = whiten(advantages, response_mask)
        return Trajectory(
            prompts=list(prompts),
            responses=texts,
            **batch,
            raw_scores=torch.tensor(raw, dtype=torch.float32),
            scores=scores,
            kl=kl,
            kl_coef=kl_coef,
            rewards=rewards,
            advantages=advantages,
            returns=returns,
            unscored=unscored,
            seconds=time.perf_counter() - start,
        )

    def batch(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """`sample_share`'s rows as the rollout's tensors: prompts left-padded to the longest, responses
        right-padded to the longest (pad token ids; zeros, and False in the masks)."""
        P = max(len(r["prompt_ids"]) for r in rows)
        R = max(len(r["response_ids"]) for r in rows)
        pad = self.tokenizer.pad_token_id
        B = len(rows)
        input_ids = torch.full((B, P + R), pad, dtype=torch.long)
        attention_mask = torch.zeros((B, P + R), dtype=torch.long)
        per_token = {k: torch.zeros((B, R)) for k in ("logprobs", "ref_logprobs", "entropy", "values")}
        ended = torch.zeros(B, dtype=torch.bool)
        for b, row in enumerate(rows):
            q, n = len(row["prompt_ids"]), len(row["response_ids"])
            input_ids[b, P - q : P] = torch.tensor(row["prompt_ids"])
            input_ids[b, P : P + n] = torch.tensor(row["response_ids"])
            attention_mask[b, P - q : P + n] = 1
            ended[b] = row["ended"]
            for k, x in per_token.items():
                x[b, :n] = row[k]
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "response_mask": attention_mask[:, P:].bool(),
            "ended": ended,
            **per_token,
        }
        return {k: v.to(self.device) for k, v in out.items()}

    def ppo_step(self, traj: Trajectory) -> PPOStats:
        """`ppo_epochs` passes over the rollout in shuffled minibatches; then the KL controller is updated.

        On N processes every process holds the whole rollout and takes an equal share of each minibatch; its
        losses are over the minibatch's token count, so with DDP averaging the gradients the step is the
        one-process step."""
        start = time.perf_counter()
        B, R = traj.response_mask.shape
        share = self.cfg.minibatch_size // self.world
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.step)
        rows: list[list[float]] = []
        for _ in range(self.cfg.ppo_epochs):
            order = torch.randperm(B, generator=generator).to(self.device)
            for i in range(0, B, self.cfg.minibatch_size):
                minibatch = order[i : i + self.cfg.minibatch_size]
                count = float(traj.response_mask[minibatch].sum())
                idx = minibatch[self.rank * share : (self.rank + 1) * share] if self.world > 1 else minibatch
                inputs = (traj.input_ids[idx], traj.attention_mask[idx], traj.position_ids[idx])
                mask = traj.response_mask[idx]

                logprobs, _ = self.response_logprobs(self.actor, *inputs, R)
                pl, policy_stats = policy_loss(
                    logprobs, traj.logprobs[idx], traj.advantages[idx], mask, self.cfg.cliprange, count
                )
                self.actor_opt.zero_grad()
                self.accelerator.backward(pl * self.world)  # DDP averages the shares' gradients; they add up
                self.accelerator.clip_grad_norm_(self.actor.parameters(), self.cfg.max_grad_norm)
                self.actor_opt.step()

                values = self.response_values(self.critic, *inputs, R)
                vl, value_clip = value_loss(
                    values, traj.values[idx], traj.returns[idx], mask, self.cfg.cliprange_value, count
                )
                self.critic_opt.zero_grad()
                self.accelerator.backward(vl * self.world)
                self.accelerator.clip_grad_norm_(self.critic.parameters(), self.cfg.max_grad_norm)
                self.critic_opt.step()

                row = torch.cat([pl.detach().view(1), policy_stats, vl.detach().view(1), value_clip.view(1)])
                rows.append((self.accelerator.reduce(row, "sum") if self.world > 1 else row).tolist())
        self.kl_ctl.update(traj.kl.sum(1).mean().item(), B)
        self.step += 1
        self.optimizer_steps += len(rows)
        pl, cf, akl, ratio, vl, vcf = (sum(col) / len(rows) for col in zip(*rows, strict=True))
        return PPOStats(
            policy_loss=pl,
            value_loss=vl,
            clip_frac=cf,
            value_clip_frac=vcf,
            approx_kl=akl,
            ratio=ratio,
            optimizer_steps=len(rows),
            seconds=time.perf_counter() - start,
        )

    def log_metrics(self, traj: Trajectory, stats: PPOStats) -> dict[str, Any]:
        """One log row: rewards (raw and scaled), KL, entropy, losses, clip fractions, explained variance."""
        mask = traj.response_mask
        ev = explained_variance(traj.values, traj.returns, mask)
        return {
            "step": self.step,
            "reward_raw": traj.raw_scores.mean().item(),
            "reward_raw_std": traj.raw_scores.std().item() if len(traj.raw_scores) > 1 else 0.0,
            "reward_scaled": traj.scores.mean().item(),
            "unscored": traj.unscored,
            "kl": traj.kl.sum(1).mean().item(),
            "kl_coef": traj.kl_coef,
            "entropy": masked_mean(traj.entropy, mask).item(),
            "policy_loss": stats.policy_loss,
            "value_loss": stats.value_loss,
            "clip_frac": stats.clip_frac,
            "value_clip_frac": stats.value_clip_frac,
            "approx_kl": stats.approx_kl,
            "ratio": stats.ratio,
            "explained_variance": None if math.isnan(ev) else ev,
            "advantage_mean": masked_mean(traj.advantages, mask).item(),
            "return_mean": masked_mean(traj.returns, mask).item(),
            "value_mean": masked_mean(traj.values, mask).item(),
            "response_length": mask.sum(1).float().mean().item(),
            "ended_frac": traj.ended.float().mean().item(),
            "rollout_s": round(traj.seconds, 2),
            "update_s": round(stats.seconds, 2),
        }

    def train(
        self, prompts: list[str], steps: int, log_path: Path | None = None, tracker: Tracker | None = None
    ) -> list[dict[str, Any]]:
        """`steps` updates over prompts cycled in a seeded shuffled order; the log is rewritten after each and
        every update's numbers go to the `tracker` (stage `ppo`, the update as the step)."""
        tracker = tracker or Tracker()
        rng = random.Random(self.seed)
        order: list[str] = []
        rows = []
        for _ in range(steps):
            batch = []
            while len(batch) < self.cfg.rollout_batch_size:
                if not order:
                    order = list(prompts)
                    rng.shuffle(order)
                batch.append(order.pop())
            traj = self.generate_trajectory(batch)
            stats = self.ppo_step(traj)
            row = self.log_metrics(traj, stats)
            rows.append(row)
            if not self.accelerator.is_main_process:  # every process holds the same rows: one writes them
                continue
            if log_path is not None:
                write_jsonl(log_path, rows)
            tracker.log("ppo", flatten(row), row["step"])
            log.info(
                "ppo step %d/%d: reward %.3f (scaled %.3f) kl %.3f coef %.4f policy %.4f value %.4f (%.0f+%.0f s)",
                row["step"],
                steps,
                row["reward_raw"],
                row["reward_scaled"],
                row["kl"],
                row["kl_coef"],
                row["policy_loss"],
                row["value_loss"],
                row["rollout_s"],
                row["update_s"],
            )
        return rows

    def save_policy(self, out: Path, card: str | None = None) -> None:
        """The actor (LoRA merged) as a model folder: fp32 safetensors + the starting policy's tokenizer, and
        `card` as its README.md. Written by the main process (under DDP every process holds the same weights);
        the others wait for it."""
        from transformers import AutoTokenizer

        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            model = self.policy().merge_and_unload() if self.cfg.lora else self.policy()
            with atomic_path(out) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                AutoTokenizer.from_pretrained(self.policy_path).save_pretrained(tmp)
                if card is not None:
                    (tmp / "README.md").write_text(card, encoding="utf-8")
        self.accelerator.wait_for_everyone()


# --------------------------------------------------------------------------- the command


def start_policy(cfg: RunConfig, run: RunPaths) -> str:
    """Where the DPO loop's iteration 1 starts: M1 of the seed SFT (iter_0/model), or `model` without it."""
    path = model_of_iteration(cfg, run, 0)
    if not (Path(path) / "config.json").exists():
        raise DataError(
            f"{path}: no model (the seed SFT writes M1 there): run `selfreward iterate` first, "
            "or set seed_sft=false to start PPO from `model`"
        )
    return path


def make_reward(
    cfg: RunConfig, run: RunPaths, policy: str, pairs_from: str | None, seed: int
) -> tuple[RewardFunction | None, dict[str, Any] | None, Any]:
    """The reward function (None on processes other than the main one, which give no reward), the reward
    model's training metrics (or None), and a generator to close (or None). Every process trains the reward
    model (`train_reward_model` shares its batch among them)."""
    paths = run.ppo
    main = is_main_process()
    if cfg.ppo.reward == "model":
        pairs = IterPaths(Path(pairs_from)) if pairs_from else run.iteration(1)
        rm_metrics = train_reward_model(
            cfg.ppo,
            policy,
            pairs.pairs_dataset,
            paths.reward_model,
            paths.reward_model_log,
            seed,
            Tracker.of(cfg),
            Lineage(cfg.model, str(run.root), 0, policy),
        )
        rm_metrics["pairs_from"] = str(pairs.root)
        if not main:
            return None, rm_metrics, None
        return ModelReward(paths.reward_model, cfg.ppo.rm_max_length, precision=cfg.ppo.precision), rm_metrics, None
    if not main:
        return None, None, None
    judge_path = resolve_model(cfg.ppo.judge_model, cfg.cache_dir) if cfg.ppo.judge_model else policy
    gen = open_generator(cfg.engine, judge_path, Path(cfg.cache_dir), seed=seed)
    reward = JudgeReward(
        gen, cfg.judge, cfg.ppo.judge_center, cfg.ppo.judge_scale, cfg.ppo.unscored_penalty, seed=seed
    )
    return reward, None, gen


def train_policy(cfg: RunConfig, run: RunPaths, prompts_path: Path, pairs_from: str | None) -> dict[str, Any]:
    """The training job of `selfreward ppo` (in its child process, on `launch.num_processes`): the
    reward (model), then PPO from the start policy; writes ppo/model, ppo_log.jsonl and the reward model's
    files, and returns the numbers `run_ppo` puts in metrics.json."""
    policy = start_policy(cfg, run)
    prompts = [p.text for p in load_prompt_file(prompts_path)]
    reward_fn, rm_metrics, gen = make_reward(cfg, run, policy, pairs_from, cfg.seed)
    try:
        trainer = PPOTrainer(cfg.ppo, policy, reward_fn, seed=cfg.seed)
        kept = [p for p in prompts if len(trainer.encode_prompt(p)) <= cfg.ppo.max_prompt_tokens]
        if len(kept) < len(prompts):
            log.warning(
                "ppo: %d of %d prompts are longer than ppo.max_prompt_tokens=%d and left out",
                len(prompts) - len(kept),
                len(prompts),
                cfg.ppo.max_prompt_tokens,
            )
        if not kept:
            raise DataError(f"{prompts_path}: every prompt is longer than ppo.max_prompt_tokens")
        log.info(
            "ppo: policy %s, %d prompts from %s, reward %s, %d process(es)",
            policy,
            len(kept),
            prompts_path,
            cfg.ppo.reward,
            trainer.world,
        )
        rows = trainer.train(kept, cfg.ppo.steps, run.ppo.log, Tracker.of(cfg))
        lineage = Lineage(cfg.model, str(run.root), 0, policy)
        data = {
            "prompts": len(kept),
            "prompts_file": str(prompts_path),
            "updates": len(rows),
            "reward": cfg.ppo.reward,
        }
        summary = {"optimizer_steps": trainer.optimizer_steps, "last_row": rows[-1] if rows else None}
        trainer.save_policy(run.ppo.model, model_card(lineage, "ppo", {"ppo": asdict(cfg.ppo)}, data, summary))
    finally:
        if gen is not None:
            gen.close()
    step_s = [r["rollout_s"] + r["update_s"] for r in rows]
    return {
        "processes": trainer.world,
        "prompts": len(kept),
        "prompts_too_long": len(prompts) - len(kept),
        "reward_model": rm_metrics,
        "steps": len(rows),
        "rollouts": len(rows),
        "responses": len(rows) * cfg.ppo.rollout_batch_size,
        "optimizer_steps": trainer.optimizer_steps,
        "mean_step_s": sum(step_s) / len(step_s) if step_s else None,
        "first_reward_raw": rows[0]["reward_raw"] if rows else None,
        "last_reward_raw": rows[-1]["reward_raw"] if rows else None,
        "last_kl": rows[-1]["kl"] if rows else None,
    }


def ddp_launch(cfg: RunConfig) -> RunConfig:
    """`cfg` with PPO's launch: a child process (training in a process that had run vLLM was measured up to 7x
    slower), on `launch.num_processes` DDP processes (the trainer generates with the whole actor on each), so
    no FSDP and no accelerate config (which may ask for FSDP or DeepSpeed)."""
    if cfg.launch.accelerate_config or cfg.launch.fsdp:
        log.warning("ppo trains with DDP; launch.fsdp / launch.accelerate_config are not used for it")
    launch = dataclasses.replace(cfg.launch, accelerate_config="", fsdp=False, separate_process=True)
    return dataclasses.replace(cfg, launch=launch)


def run_ppo(
    cfg: RunConfig,
    prompts_file: str | None = None,
    pairs_from: str | None = None,
    argv: list[str] | None = None,
    force: bool = False,
) -> PPOPaths:
    """Train the PPO baseline of the run `cfg.run_dir`; returns its paths (`iterations/<run>/ppo/`). The training
    runs as the loop's training stages do (`launch.*`: a child process, on N processes with DDP).

    A finished PPO run with the same settings (ppo and judge config, start policy, prompts, pairs, seed) is
    kept and nothing is trained; one with other settings is a ConfigError unless `force` (which retrains it
    and replaces its files)."""
    if pairs_from and cfg.ppo.reward != "model":
        raise ConfigError("--pairs-from is only used with ppo.reward=model (a reward model trained on the pairs)")
    check_shares(cfg.ppo, cfg.launch.num_processes)
    if cfg.ppo.reward == "model":
        check_rm_batch(cfg.ppo, cfg.launch.num_processes)
    run = open_run(cfg)
    paths = run.ppo
    paths.root.mkdir(parents=True, exist_ok=True)
    prompts_path = Path(prompts_file) if prompts_file else run.iteration(1).prompts
    prompts = [p.text for p in load_prompt_file(prompts_path)]
    policy = start_policy(cfg, run)
    # the start policy's weights (iter_0 retrained: a new PPO run), not only its path
    key = fingerprint(cfg.ppo, cfg.judge, policy, model_digest(policy), prompts, pairs_from, cfg.seed)
    if paths.metrics.exists() and (paths.model / "config.json").exists() and not force:
        if read_json(paths.metrics).get("fingerprint") == key:
            log.info("ppo: %s is finished with the same settings; nothing to do (--force trains again)", paths.root)
            return paths
        raise ConfigError(
            f"{paths.root} was trained with other settings (ppo/judge config, policy, prompts or seed); "
            "--force trains it again and replaces its files"
        )
    write_text(paths.config, dump_yaml(cfg))
    start = time.perf_counter()
    args = ["--prompts", str(prompts_path), *(["--pairs-from", pairs_from] if pairs_from else [])]
    with PeakMemory() as mem:
        trained = train(
            ddp_launch(cfg),
            run,
            "selfreward.baselines.ppo",
            args,
            lambda: train_policy(cfg, run, prompts_path, pairs_from),
        )
    wall = time.perf_counter() - start
    write_json(
        paths.metrics,
        {
            "policy": policy,
            "fingerprint": key,
            "prompts_file": str(prompts_path),
            "reward": cfg.ppo.reward,
            **trained,
            "wall_s": round(wall, 1),
            "peak_rss_gib": round(mem.peak_gib, 2),
            "manifest": manifest(argv or ["selfreward", "ppo"]),
        },
    )
    log.info("ppo: %d steps in %.0f s -> %s (peak memory %.2f GiB)", trained["steps"], wall, paths.model, mem.peak_gib)
    return paths


def main() -> None:
    """`selfreward ppo`'s training job alone, in its child process (`train_policy`)."""
    parser = stage_parser(main.__doc__)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--pairs-from", default=None)
    args = parser.parse_args()
    cfg, run = stage_setup(args)
    stage_main(args, lambda: train_policy(cfg, run, Path(args.prompts), args.pairs_from))


if __name__ == "__main__":
    main()
