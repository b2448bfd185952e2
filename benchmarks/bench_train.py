"""Training against the machine's own ceiling: a large GEMM's GFLOP/s (fp32 and bf16), then a few seed-SFT and
DPO optimiser steps of the embedded model with the default config's shapes, each as seconds per step, real
(non-padding) tokens per second and achieved GFLOP/s by the 6 * N * tokens count, as a fraction of the ceiling
of the precision it ran in. Writes benchmarks/results/train.json with the CPU's model and flags.

    make bench-train                       # BENCH_ARGS="--steps 6"
    make bench-train BENCH_ARGS="--group-by-length --lora --profile"

`--group-by-length` and `--lora` add SFT runs with the other batching than the config's (`sft_shuffled`, as the
default groups by length) and with a LoRA adapter (its
GFLOP/s still counts 6 * N * tokens for the whole model, so it is the speed of the same work); `--profile`
records one SFT and one DPO optimiser step (after the first) with torch.profiler and writes where their time
went, by kind of operator, to benchmarks/results/train_profile.json. `--sft-batch-size 2` and `--dpo-batch-size 2`
train the same effective batch in other steps (accumulation scaled). DPO trains on pairs made from the seed data
(`seed_pairs`) or, with `--dpo-pairs iterations/<run>/iter_K/pairs`, on a run's own pairs. `--precision fp32` trains
both in fp32, as a CPU without native bf16 does; on an AVX-512 CPU, `ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` in the environment keeps torch's kernels, oneDNN and MKL to
AVX2 (the GEMM ceiling is then measured under the same limit; its bf16 figure means nothing there).
`--all-positions` adds SFT and DPO runs with TRL's own fused LM head on CPU, which projects every position, prompt
and padding included (`sft_all_positions`, `dpo_all_positions`; the stages project only the labelled ones:
`models.lm_head_on_labelled_positions_only`). Each trainer runs in its own process, as the loop's training stages
do, so its speed and peak memory (PSS) do not depend on what ran before it (a DPO run after the seed SFT in one
process measured 3.34 s per step against 2.57 alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_flags  # same folder: `python benchmarks/bench_train.py`
from transformers import TrainerCallback

from selfreward.artifacts import IterPaths, write_json
from selfreward.config import RunConfig, train_bf16
from selfreward.loop import sft
from selfreward.models import lm_head_on_labelled_positions_only, resolve_model, trl_lm_head_default
from selfreward.runs import PeakMemory

OUT = Path(__file__).resolve().parent / "results" / "train.json"
PROFILE_OUT = OUT.with_name("train_profile.json")

# Operator kinds for the profile, by aten name (first match wins); the rest is "other".
KINDS = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")),
    ("attention", ("scaled_dot_product", "flash_attention", "aten::_efficient_attention")),
    ("softmax / log-softmax / loss", ("softmax", "cross_entropy", "nll_loss", "logsumexp", "log_sigmoid")),
    ("optimizer", ("adamw", "_foreach", "aten::addcdiv", "aten::addcmul", "aten::lerp", "aten::sqrt")),
    (
        "copies / casts / layout",
        (
            "aten::copy_",
            "aten::to",
            "aten::_to_copy",
            "aten::contiguous",
            "aten::clone",
            "aten::cat",
            "aten::index",
            "aten::gather",
            "aten::embedding",
            "aten::fill_",
            "aten::zero_",
            "aten::empty",
            "aten::scatter",
        ),
    ),
    (
        "element-wise",
        (
            "aten::mul",
            "aten::add",
            "aten::sub",
            "aten::div",
            "aten::silu",
            "aten::pow",
            "aten::rsqrt",
            "aten::mean",
            "aten::sum",
            "aten::neg",
            "aten::exp",
            "aten::where",
            "aten::cos",
            "aten::sin",
            "aten::sigmoid",
            "aten::masked",
            "aten::clamp",
            "aten::max",
            "aten::min",
            "aten::abs",
        ),
    ),
)


def gemm_gflops(dtype_name: str, n: int = 2048, seconds: float = 3.0) -> float:
    """Sustained GFLOP/s of an n x n x n matmul in `dtype_name` on all of torch's threads."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


class StepProfiler(TrainerCallback):
    """torch.profiler over optimiser step `step` (1-based; not the first, which warms up): self CPU time per
    operator, summed by kind, beside the step's wall time."""

    def __init__(self, step: int = 2) -> None:
        self.step, self.prof, self.wall, self.result = step, None, 0.0, None

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        from torch.profiler import ProfilerActivity, profile

        if state.global_step + 1 == self.step:
            self.prof = profile(activities=[ProfilerActivity.CPU])
            self.prof.__enter__()
            self.wall = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if self.prof is None or self.result is not None:
            return
        wall = time.perf_counter() - self.wall
        self.prof.__exit__(None, None, None)
        ops = [(e.key, e.self_cpu_time_total / 1e6) for e in self.prof.key_averages()]
        total = sum(t for _, t in ops)
        kinds: dict[str, float] = {}
        for name, t in ops:
            kinds[kind_of(name)] = kinds.get(kind_of(name), 0.0) + t
        top = sorted(ops, key=lambda x: -x[1])[:15]
        self.result = {
            "step": self.step,
            "wall_s": round(wall, 2),
            "profiled_self_cpu_s": round(total, 2),
            "by_kind": {
                k: {"s": round(t, 2), "fraction": round(t / total, 3)}
                for k, t in sorted(kinds.items(), key=lambda x: -x[1])
            },
            "top_ops": [{"op": n, "s": round(t, 3), "fraction": round(t / total, 3)} for n, t in top],
        }


class StepTimer(TrainerCallback):
    """Wall time at every optimiser step's end."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.times.append(time.perf_counter())


def steady_step_s(times: list[float], skip: int | None = None) -> float:
    """Mean seconds per step after the first (which includes warm-up), leaving out step `skip` (1-based: the
    profiled one, slowed by the profiler)."""
    gaps = [b - a for i, (a, b) in enumerate(zip(times, times[1:], strict=False), start=2) if i != skip]
    return sum(gaps) / len(gaps) if gaps else float("nan")


def epoch_padding(trainer) -> dict:
    """Padded and real tokens over one whole epoch of the trainer's data loader (collation only, no training):
    what length grouping saves on every step, not only on the timed ones."""
    padded = real = 0
    for batch in trainer.get_train_dataloader():
        padded += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    return {
        "epoch_padded_tokens": padded,
        "epoch_real_tokens": real,
        "epoch_padding_fraction": round(1 - real / padded, 3),
    }


class Padding:
    """Wraps a data collator: the padded (batch x width) and real (attention mask) tokens of the first `batches`
    batches (the data loader reads one ahead, which is not trained on)."""

    def __init__(self, collate, batches: int) -> None:
        self.collate, self.batches, self.padded, self.real = collate, batches, 0, 0

    def __call__(self, rows):
        batch = self.collate(rows)
        if self.batches > 0:
            self.batches -= 1
            self.padded += batch["input_ids"].numel()
            mask = batch.get("attention_mask")
            self.real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        return batch


def bench_sft(
    cfg: RunConfig,
    model: str,
    steps: int,
    scratch: Path,
    group_by_length: bool | None = None,
    lora: bool = False,
    profiler: StepProfiler | None = None,
) -> dict:
    it = IterPaths(scratch / "iter_0")
    sft.write_data(cfg.seed_data, cfg.judge, cfg.sft, it, cfg.seed)
    examples = [json.loads(line) for line in it.sft_data.read_text().splitlines()]
    sft_cfg = dataclasses.replace(cfg.sft, max_steps=steps, save_steps=0, lora=lora)
    if group_by_length is not None:
        sft_cfg = dataclasses.replace(sft_cfg, group_by_length=group_by_length)
    trainer = sft.build_trainer(model, examples, sft_cfg, str(scratch / "sft"), cfg.seed)
    timer = StepTimer()
    trainer.add_callback(timer)
    if profiler is not None:
        trainer.add_callback(profiler)
    epoch = epoch_padding(trainer)
    padding = Padding(trainer.data_collator, steps * sft_cfg.grad_accum)
    trainer.data_collator = padding
    trainer.train()
    per_step_examples = sft_cfg.batch_size * sft_cfg.grad_accum
    tokens_per_step = padding.real / steps  # the real tokens of the batches these steps trained on
    skip = profiler.step if profiler is not None else None
    r = measured(
        trainer, timer, tokens_per_step, train_bf16(sft_cfg.precision), len(examples), per_step_examples, skip
    )
    return {
        **r,
        **epoch,
        "lora": lora,
        "group_by_length": sft_cfg.group_by_length,
        "padded_tokens_per_step": round(padding.padded / steps),
        "padding_fraction": round(1 - padding.real / padding.padded, 3),
    }


def seed_pairs(cfg: RunConfig) -> list[dict]:
    """Pairs with the loop's shapes: our seed instructions with their reference answer as chosen and the answer to
    an instruction half the file away as rejected, so the two sides' lengths are independent draws from one
    distribution, as two sampled candidates' are (what is measured is the speed, not what is learnt). The pairs of a
    default run (3 iterations): 124-154 tokens per side on average, 31-34% of a 2-pair batch padding; these: 28%."""
    rows = [json.loads(line) for line in Path(cfg.seed_data.instructions).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("response")]
    return [
        {
            "prompt": [{"role": "user", "content": r["instruction"]}],
            "chosen": [{"role": "assistant", "content": r["response"]}],
            "rejected": [{"role": "assistant", "content": rows[(i + len(rows) // 2) % len(rows)]["response"]}],
        }
        for i, r in enumerate(rows)
    ]


def bench_dpo(
    cfg: RunConfig,
    model: str,
    steps: int,
    scratch: Path,
    profiler: StepProfiler | None = None,
    pairs_dir: Path | None = None,
) -> dict:
    """DPO optimiser steps on `seed_pairs`, or on a run's pairs (`pairs_dir`: an iter_K/pairs folder)."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    if pairs_dir is None:
        dataset = datasets.Dataset.from_list(seed_pairs(cfg))
    else:
        dataset = datasets.load_from_disk(str(pairs_dir)).select_columns(["prompt", "chosen", "rejected"])
    tokenizer = AutoTokenizer.from_pretrained(model)
    d = cfg.dpo
    args = DPOConfig(
        output_dir=str(scratch / "dpo"),
        beta=d.beta,
        learning_rate=d.learning_rate,
        max_steps=steps,
        per_device_train_batch_size=d.batch_size,
        gradient_accumulation_steps=d.grad_accum,
        max_length=d.max_length,
        precompute_ref_log_probs=d.precompute_ref_log_probs,
        bf16=train_bf16(d.precision),
        use_cpu=True,
        gradient_checkpointing=d.gradient_checkpointing,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
    )
    import torch

    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, use_safetensors=True)
    trainer = DPOTrainer(model=policy, args=args, train_dataset=dataset, processing_class=tokenizer)
    timer = StepTimer()
    trainer.add_callback(timer)
    if profiler is not None:
        trainer.add_callback(profiler)
    epoch = epoch_padding(trainer)
    padding = Padding(trainer.data_collator, steps * d.grad_accum)
    trainer.data_collator = padding
    trainer.train()
    tokens_per_step = padding.real / steps  # chosen + rejected: the real tokens of the batches these steps trained on
    skip = profiler.step if profiler is not None else None
    per_step = d.batch_size * d.grad_accum
    r = measured(trainer, timer, tokens_per_step, train_bf16(d.precision), len(dataset), per_step, skip)
    return {
        **r,
        "pairs": str(pairs_dir) if pairs_dir else "seed_pairs",
        **epoch,
        "padded_tokens_per_step": round(padding.padded / steps),
        "padding_fraction": round(1 - padding.real / padding.padded, 3),
    }


def measured(
    trainer, timer: StepTimer, tokens_per_step: float, bf16: bool, examples: int, per_step: int, skip: int | None
) -> dict:
    # every parameter of the model (a LoRA adapter's base included): the FLOPs of the forward and backward
    n_params = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" not in n)
    step_s = steady_step_s(timer.times, skip)
    tokens_s = tokens_per_step / step_s
    return {
        "precision": "bf16" if bf16 else "fp32",
        "steps_timed": max(0, len(timer.times) - 1 - (skip is not None)),
        "s_per_step": round(step_s, 2),
        "examples_per_step": per_step,
        "real_tokens_per_step": round(tokens_per_step),
        "real_tokens_per_s": round(tokens_s, 1),
        "params": n_params,
        "achieved_gflops": round(6 * n_params * tokens_s / 1e9, 1),
        "examples": examples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps per trainer (the first is not timed)")
    parser.add_argument("--only", choices=["gemm", "sft", "dpo"], default=None)
    parser.add_argument(
        "--group-by-length",
        action="store_true",
        help="SFT also with the other batching than the config's: sft_shuffled (or sft_grouped)",
    )
    parser.add_argument("--lora", action="store_true", help="SFT also with a LoRA adapter (sft_lora)")
    parser.add_argument(
        "--sft-batch-size",
        type=int,
        default=None,
        help="SFT's per-step batch (accumulation scaled to keep the config's effective batch)",
    )
    parser.add_argument(
        "--dpo-batch-size",
        type=int,
        default=None,
        help="DPO's per-step batch in pairs (accumulation scaled to keep the config's effective batch)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default=None,
        help="SFT and DPO precision instead of the config's (fp32: what a CPU without native bf16 trains in)",
    )
    parser.add_argument(
        "--dpo-pairs",
        type=Path,
        default=None,
        help="DPO on a run's pairs (an iterations/<run>/iter_K/pairs folder) instead of pairs made from the seed data",
    )
    parser.add_argument(
        "--all-positions",
        action="store_true",
        help="SFT and DPO also with TRL's every-position LM head (sft_all_positions, dpo_all_positions; peak memory "
        "not clean: not the first trainer)",
    )
    parser.add_argument("--profile", action="store_true", help=f"profile step 2 of SFT and DPO -> {PROFILE_OUT.name}")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)  # one trainer, in a child process
    parser.add_argument("--job-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = RunConfig()
    for stage, batch in ((cfg.sft, args.sft_batch_size), (cfg.dpo, args.dpo_batch_size)):
        if batch:  # the same effective batch in other steps
            effective = stage.batch_size * stage.grad_accum
            if effective % batch:
                parser.error(
                    f"--{'sft' if stage is cfg.sft else 'dpo'}-batch-size must divide the effective batch {effective}"
                )
            stage.batch_size, stage.grad_accum = batch, effective // batch
    if args.precision:
        cfg.sft.precision = cfg.dpo.precision = args.precision
    if args.job:
        run_job(args, cfg)
        return
    result: dict = {"machine": cpu_flags(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": args.steps}
    ceilings = {p: round(gemm_gflops(p), 1) for p in ("fp32", "bf16")}
    result["gemm_gflops"] = ceilings
    print(f"GEMM 2048^3: fp32 {ceilings['fp32']} GFLOP/s, bf16 {ceilings['bf16']} GFLOP/s")
    profiles: dict = {}
    for name in job_names(args, cfg):
        # each trainer in its own process, as the loop trains each stage in a child: a clean speed and peak memory
        with tempfile.TemporaryDirectory(prefix="bench-train-job-") as tmp:
            out = Path(tmp) / "job.json"
            cmd = [sys.executable, __file__, *sys.argv[1:], "--job", name, "--job-out", str(out)]
            subprocess.run(cmd, check=True)
            job = json.loads(out.read_text())
        r = job["result"]
        r["fraction_of_ceiling"] = round(r["achieved_gflops"] / ceilings[r["precision"]], 3)
        # the speed issue's own yardstick (written on a CPU where training runs fp32): the fp32 ceiling
        r["fraction_of_fp32_ceiling"] = round(r["achieved_gflops"] / ceilings["fp32"], 3)
        result[name] = r
        if job["profile"] is not None:
            profiles[name] = job["profile"]
        print(
            f"{name}: {r['s_per_step']} s/step, {r['real_tokens_per_s']} tok/s, {r['achieved_gflops']} GFLOP/s "
            f"= {r['fraction_of_ceiling']:.0%} of the {r['precision']} GEMM ceiling "
            f"({r['fraction_of_fp32_ceiling']:.0%} of the fp32 one), peak {r['peak_pss_gib']} GiB"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_json(OUT, result)
    print(OUT)
    if profiles:
        write_json(PROFILE_OUT, {"machine": result["machine"], "time": result["time"], **profiles})
        for name, prof in profiles.items():
            kinds = ", ".join(f"{k} {v['fraction']:.0%}" for k, v in prof["by_kind"].items())
            print(f"{name} step {prof['step']} ({prof['wall_s']} s): {kinds}")
        print(PROFILE_OUT)


def job_names(args: argparse.Namespace, cfg: RunConfig) -> list[str]:
    """The trainers this invocation measures, in order (`--only` keeps those of one kind)."""
    names = ["sft"]
    if args.group_by_length:  # the other batching than the config's (`sft`)
        names.append("sft_shuffled" if cfg.sft.group_by_length else "sft_grouped")
    if args.lora:
        names.append("sft_lora")
    names.append("dpo")
    if args.all_positions:
        names += ["sft_all_positions", "dpo_all_positions"]
    return [n for n in names if args.only in (None, n.split("_")[0])]


def run_job(args: argparse.Namespace, cfg: RunConfig) -> None:
    """One trainer (`--job NAME`) in this process, its measurements (and profile) written to `--job-out`."""
    name = args.job
    model = resolve_model(cfg.model, cfg.cache_dir)
    lm_head_on_labelled_positions_only()  # as the loop's SFT and DPO stages
    profiler = StepProfiler() if args.profile and name in ("sft", "dpo") else None
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp, PeakMemory() as mem:
        scratch = Path(tmp)
        if name == "sft":
            r = bench_sft(cfg, model, args.steps, scratch, profiler=profiler)
        elif name in ("sft_grouped", "sft_shuffled"):
            r = bench_sft(cfg, model, args.steps, scratch, group_by_length=name == "sft_grouped")
        elif name == "sft_lora":
            r = bench_sft(cfg, model, args.steps, scratch, lora=True)
        elif name == "dpo":
            r = bench_dpo(cfg, model, args.steps, scratch, profiler, args.dpo_pairs)
        else:  # sft_all_positions, dpo_all_positions: TRL's own LM head, on the same data as `sft` / `dpo`
            with trl_lm_head_default():
                if name == "sft_all_positions":
                    r = bench_sft(cfg, model, args.steps, scratch)
                else:
                    r = bench_dpo(cfg, model, args.steps, scratch, pairs_dir=args.dpo_pairs)
            r["lm_head"] = "every position (TRL's CPU default)"
    r["peak_pss_gib"] = round(mem.peak_gib, 2)
    sft_job = name.startswith("sft")
    r["batch_size"] = cfg.sft.batch_size if sft_job else cfg.dpo.batch_size
    r["grad_accum"] = cfg.sft.grad_accum if sft_job else cfg.dpo.grad_accum
    write_json(args.job_out, {"result": r, "profile": profiler.result if profiler else None})


if __name__ == "__main__":
    main()
