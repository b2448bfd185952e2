"""What fits, by arithmetic, before anything runs (`selfreward plan`, and the check before `iterate`).

Reads  the model's own config.json (a local folder, the embedded model's converted folder, or, offline, the
       architectures in `KNOWN_SHAPES` for the hub ids our configs name); nothing is loaded or downloaded
Writes nothing

For every stage of a config, the memory per device and a time estimate from FLOPs:

- **Parameters** from the shape: embeddings V*H (twice when untied), per layer the attention projections
  (H*H for q and o, H*kv_heads*head_dim for k and v), the gated MLP (3*H*I) and two norms, a final norm.
- **Training** (seed SFT, DPO): full fine-tuning keeps fp32 weights, gradients and AdamW's two moments:
  16 bytes a parameter (models are loaded in fp32; bf16 is autocast). LoRA (`lora: true`, every linear layer)
  keeps the weights frozen, in fp32 (4 bytes), and 16 bytes per adapter parameter (r*(in+out) per linear
  layer). Sharded (ZeRO-3 / FSDP over N processes): the 16 bytes are divided by N. DPO's reference model (4
  bytes a parameter) is held when it is another model (`dpo.reference: initial`) or, without LoRA, when
  `precompute_ref_log_probs` is off.
- **Activations** per micro-batch (DPO: chosen and rejected, 2 sequences a pair), after Korthikanti et al.
  2022 for fused attention: 34*H bytes (16-bit) per token per layer without gradient checkpointing; with it
  2*H per token per layer kept plus one layer recomputed; plus the logits, tokens*V*4 bytes twice (fp32 for
  the loss and its gradient). fp32 training doubles the 16-bit figures.
- **Generation** (prompts, candidates, judgements): vLLM on a GPU reserves `gpu_memory_utilization` of the
  device; it fits when the weights (over `tensor_parallel_size`) leave KV cache for at least one sequence of
  `max_model_len` (2*L*kv_heads*head_dim*2 bytes a token). On a CPU: the weights plus `engine.kv_cache_gib`.
- **Runtime overhead**: `OVERHEAD_GIB` for a generation stage, `TRAINING_OVERHEAD_GIB` for a training stage (its
  child process and the loop's process beside it).
- **Time**: 6*P FLOPs per trained token (2*P more per token for DPO's reference pass), 2*P per generated or
  prefilled token, at `efficiency` of the device's peak (stated, never measured here): an order of
  magnitude, to know whether a run takes minutes or days.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfreward.config import EMBEDDED_MODEL, ConfigError, RunConfig, resolve_dtype, train_bf16

log = logging.getLogger(__name__)

GIB = 2**30
OVERHEAD_GIB = 1.0
"""A generation stage's runtime beside its weights and cache: a CUDA context, or the Python, torch and tokenizer
runtime of the loop's process."""
TRAINING_OVERHEAD_GIB = 1.5
"""A training stage's: the training child's runtime and the loop's process beside it (measured on a CPU: the
training stages' peaks exceed their tensors by 1.2-2 GiB, `make bench-plan`)."""
JUDGE_PROMPT_TOKENS = 450
"""The judge template with an instruction and an answer, before the answer's own tokens (ours: ~450)."""

KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    # The architectures of the hub models our configs name, for planning offline (facts of the published
    # config.json files: sizes only).
    "smollm2-135m-instruct": dict(
        vocab_size=49152, hidden_size=576, num_hidden_layers=30, intermediate_size=1536,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
    ),
    "mistralai/Mistral-7B-Instruct-v0.3": dict(
        vocab_size=32768, hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
    ),
}  # fmt: skip

PEAK_TFLOPS = {"gpu": 989.0, "cpu": 0.2}
"""Dense bf16 peak of an H100 (989 TFLOP/s), and a 2-core CPU's fp32 GEMM ceiling (~0.2 TFLOP/s)."""


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder-only transformer that memory and FLOPs follow."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool

    @classmethod
    def of(cls, config: dict[str, Any]) -> Shape:
        heads = config["num_attention_heads"]
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_hidden_layers=config["num_hidden_layers"],
            intermediate_size=config["intermediate_size"],
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    @property
    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one decoder layer: q, k, v, o, gate, up, down."""
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        q = self.num_attention_heads * self.head_dim
        i = self.intermediate_size
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def parameters(self) -> int:
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        per_layer = sum(a * b for a, b in self.linear_shapes) + 2 * self.hidden_size
        return embeddings + self.num_hidden_layers * per_layer + self.hidden_size

    def lora_parameters(self, r: int) -> int:
        return self.num_hidden_layers * sum(r * (a + b) for a, b in self.linear_shapes)

    @property
    def kv_bytes_per_token(self) -> int:
        """16-bit K and V of every layer for one token."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * 2


def model_shape(cfg: RunConfig) -> tuple[Shape, str]:
    """The model's shape and where it was read: the local folder's config.json, the embedded model's converted
    folder, or `KNOWN_SHAPES`; ConfigError when none has it (a hub id offline)."""
    candidates = [Path(cfg.model)]
    if cfg.model == EMBEDDED_MODEL:
        candidates.insert(0, Path(cfg.cache_dir) / "models" / EMBEDDED_MODEL)
    for folder in candidates:
        if (folder / "config.json").exists():
            config = json.loads((folder / "config.json").read_text())
            return Shape.of(config.get("text_config", config)), str(folder / "config.json")
    if cfg.model in KNOWN_SHAPES:
        return Shape.of(KNOWN_SHAPES[cfg.model]), "selfreward.planner.KNOWN_SHAPES"
    raise ConfigError(
        f"model '{cfg.model}': no config.json to plan from (a local folder, or one of {sorted(KNOWN_SHAPES)})"
    )


@dataclass
class StagePlan:
    stage: str
    gib: float
    """Memory per device."""
    parts: dict[str, float]
    """What makes it up, in GiB."""
    hours: float
    """At the stated efficiency."""
    fits: bool = True
    note: str = ""


@dataclass(frozen=True)
class Hardware:
    gpus: int
    """0: a CPU machine."""
    memory_gib: float
    """Per device (per GPU, or the machine's memory)."""
    efficiency: float = 0.4


def training_plan(
    name: str,
    shape: Shape,
    hw: Hardware,
    *,
    bf16: bool,
    lora: bool,
    lora_r: int,
    gradient_checkpointing: bool,
    sequences: int,
    length: int,
    trained_tokens: float,
    reference: bool,
    processes: int,
    sharded: bool,
) -> StagePlan:
    """One training stage: weights, gradients and optimiser states, activations of a micro-batch of `sequences`
    of `length` tokens, the reference model when held (module docstring)."""
    p = shape.parameters
    wbytes = 4  # the training stages load every model in fp32 (bf16 is autocast)
    if lora:
        states = p * wbytes + 16 * shape.lora_parameters(lora_r)
    else:
        states = 16 * p / (processes if sharded else 1)
    tokens = sequences * length
    scale = 1 if bf16 else 2
    per_layer = (2 if gradient_checkpointing else 34) * shape.hidden_size * tokens * scale
    activations = shape.num_hidden_layers * per_layer + (
        34 * shape.hidden_size * tokens * scale if gradient_checkpointing else 0
    )
    logits = 2 * tokens * shape.vocab_size * 4
    ref = p * wbytes / (processes if sharded else 1) if reference else 0
    parts = {
        "weights+grads+optimizer": states / GIB,
        "activations": activations / GIB,
        "logits": logits / GIB,
        "reference model": ref / GIB,
        "runtime": TRAINING_OVERHEAD_GIB,
    }
    flops = (6 + (2 if name == "dpo" else 0)) * p * trained_tokens
    return StagePlan(name, sum(parts.values()), parts, _hours(flops, hw, max(processes, 1)))


def generation_plan(
    name: str, shape: Shape, cfg: RunConfig, hw: Hardware, generated: float, prefill: float
) -> StagePlan:
    """A generation stage on the configured engine (module docstring)."""
    e = cfg.engine
    p = shape.parameters
    if hw.gpus:
        tp = e.tensor_parallel_size
        weights = p * 2 / tp
        reserved = e.gpu_memory_utilization * hw.memory_gib * GIB
        kv_room = reserved - weights - OVERHEAD_GIB * GIB
        need = shape.kv_bytes_per_token / tp * e.max_model_len
        parts = {
            "weights": weights / GIB,
            "KV cache and activations": (reserved - weights) / GIB,
            "runtime": OVERHEAD_GIB,
        }
        plan = StagePlan(name, reserved / GIB + OVERHEAD_GIB, parts, _hours(2 * p * (generated + prefill), hw, tp))
        if kv_room < need:
            plan.fits = False
            plan.note = (
                f"vLLM: {weights / GIB:.1f} GiB of weights per GPU leave {max(kv_room, 0) / GIB:.1f} GiB of the "
                f"{e.gpu_memory_utilization:.0%} reserved, less than one {e.max_model_len}-token sequence's KV cache "
                f"({need / GIB:.2f} GiB)"
            )
        return plan
    wbytes = 2 if resolve_dtype(e.dtype) == "bfloat16" else 4
    parts = {"weights": p * wbytes / GIB, "KV cache": float(e.kv_cache_gib), "runtime": OVERHEAD_GIB}
    return StagePlan(name, sum(parts.values()), parts, _hours(2 * p * (generated + prefill), hw, 1))


def _hours(flops: float, hw: Hardware, devices: int) -> float:
    peak = PEAK_TFLOPS["gpu" if hw.gpus else "cpu"] * 1e12 * (devices if hw.gpus else 1)
    return flops / (peak * hw.efficiency) / 3600


def plan(cfg: RunConfig, hw: Hardware, command: str = "iterate") -> tuple[Shape, str, list[StagePlan]]:
    """Every stage of one iteration of `cfg` (and the seed SFT), on `hw`; for `command` ppo (and reason with a PPO
    method) also the PPO stage (`ppo_plan`)."""
    shape, source = model_shape(cfg)
    n = cfg.prompt_gen.num_prompts
    processes = max(cfg.launch.num_processes, 1)
    sharded = processes > 1 and (cfg.launch.fsdp or "zero3" in cfg.launch.accelerate_config)
    answers = n * cfg.responses.n
    stages = [
        generation_plan(
            "prompts", shape, cfg, hw, n * cfg.prompt_gen.oversample * cfg.prompt_gen.max_tokens,
            n * cfg.prompt_gen.oversample * 300,
        ),
        generation_plan("candidates", shape, cfg, hw, answers * cfg.responses.max_tokens, answers * 100),
        generation_plan(
            "judgements", shape, cfg, hw, answers * cfg.judge.samples * cfg.judge.max_tokens,
            answers * (JUDGE_PROMPT_TOKENS + cfg.responses.max_tokens),
        ),
    ]  # fmt: skip
    d = cfg.dpo
    per_pass = d.batch_size * max(1, d.grad_accum // processes) * processes
    steps = max(d.min_steps, math.ceil(d.epochs * n / per_pass))
    stages.append(
        training_plan(
            "dpo", shape, hw, bf16=train_bf16(d.precision), lora=d.lora, lora_r=d.lora_r,
            gradient_checkpointing=d.gradient_checkpointing, sequences=2 * d.batch_size, length=d.max_length,
            trained_tokens=steps * per_pass * 2 * d.max_length / 2,
            reference=d.reference == "initial" or (not d.lora and not d.precompute_ref_log_probs),
            processes=processes, sharded=sharded,
        )
    )  # fmt: skip
    if cfg.seed_sft:
        s = cfg.sft
        stages.insert(
            0,
            training_plan(
                "seed sft", shape, hw, bf16=train_bf16(s.precision), lora=s.lora, lora_r=s.lora_r,
                gradient_checkpointing=s.gradient_checkpointing, sequences=s.batch_size, length=s.max_length,
                trained_tokens=430 * s.max_length / 2, reference=False, processes=processes, sharded=sharded,
            ),
        )  # fmt: skip
    if command == "ppo" or (command == "reason" and any("ppo" in m for m in cfg.reason.methods)):
        stages.append(ppo_plan(cfg, shape, hw))
    for st in stages:
        if st.fits and st.gib > hw.memory_gib:
            st.fits = False
            st.note = f"needs {st.gib:.1f} GiB per device, {hw.memory_gib:.0f} GiB available"
    return shape, source, stages


def ppo_plan(cfg: RunConfig, shape: Shape, hw: Hardware) -> StagePlan:
    """The PPO stage: the actor trained as a training stage (LoRA or full) with its frozen reference, beside it a
    critic of the same shape trained fully (weights, gradients, AdamW states, activations) and the reward model or
    judge (weights, fp32). One process."""
    c = cfg.ppo
    length = c.max_prompt_tokens + c.max_new_tokens
    actor = training_plan(
        "ppo", shape, hw, bf16=train_bf16(c.precision), lora=c.lora, lora_r=c.lora_r, gradient_checkpointing=False,
        sequences=c.minibatch_size, length=length,
        trained_tokens=2 * c.steps * c.rollout_batch_size * length * c.ppo_epochs, reference=True, processes=1,
        sharded=False,
    )  # fmt: skip
    p = shape.parameters
    parts = {
        **actor.parts,
        "critic weights+grads+optimizer": 16 * p / GIB,
        "critic activations": actor.parts["activations"],
        "reward model or judge": 4 * p / GIB,
    }
    return StagePlan("ppo", sum(parts.values()), parts, actor.hours * 2)


def advice(stage: StagePlan, cfg: RunConfig, hw: Hardware) -> str:
    """What would fit instead, in a few words."""
    if stage.stage in ("prompts", "candidates", "judgements"):
        return "raise engine.tensor_parallel_size, or lower engine.max_model_len"
    if stage.stage == "ppo":
        return (
            "ppo.lora=true (the critic still trains fully, 16 bytes a parameter), a smaller model, "
            "or a smaller ppo.minibatch_size"
        )
    section = "dpo" if stage.stage == "dpo" else "sft"
    tips = [f"{section}.lora=true", f"a smaller {section}.batch_size or {section}.max_length"]
    if not getattr(cfg, section).gradient_checkpointing:
        tips.insert(1, f"{section}.gradient_checkpointing=true")
    if hw.gpus > 1 or cfg.launch.num_processes > 1:
        tips.insert(
            0, "ZeRO-3/FSDP over the GPUs (launch.accelerate_config=configs/accelerate_zero3.yaml or launch.fsdp)"
        )
    return ", or ".join(tips)


def check(cfg: RunConfig, hw: Hardware, command: str = "iterate") -> None:
    """ConfigError (one line) naming the first stage of `command` (iterate, expert-iter, ppo, reason) that cannot
    fit, what it needs and what would fit. A model whose shape cannot be read here (a hub id not in KNOWN_SHAPES)
    is not planned: a warning, no refusal."""
    try:
        _, _, stages = plan(cfg, hw, command)
    except ConfigError as e:
        log.warning("%s: not planned", e)
        return
    for st in stages:
        if not st.fits:
            raise ConfigError(f"plan: stage {st.stage} does not fit: {st.note}; try {advice(st, cfg, hw)}")


def this_machine() -> Hardware:
    """The hardware here: its GPUs and the memory of one, or the machine's memory."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return Hardware(torch.cuda.device_count(), torch.cuda.get_device_properties(0).total_memory / GIB)
    return Hardware(0, psutil.virtual_memory().total / GIB)
