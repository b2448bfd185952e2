"""Training against the machine's own ceiling: a large GEMM's GFLOP/s (fp32 and bf16), then a few seed-SFT and
DPO optimiser steps of the embedded model with the default config's shapes, each as seconds per step, real
(non-padding) tokens per second and achieved GFLOP/s by the 6 * N * tokens count, as a fraction of the ceiling
of the precision it ran in. Writes benchmarks/results/train.json with the CPU's model and flags.

    make bench-train                       # BENCH_ARGS="--steps 6"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from bench_judge_modes import cpu_flags  # same folder: `python benchmarks/bench_train.py`
from transformers import TrainerCallback

from selfreward.artifacts import IterPaths, write_json
from selfreward.config import RunConfig, train_bf16
from selfreward.loop import sft
from selfreward.loop.dpo import chat_ids
from selfreward.models import resolve_model

OUT = Path(__file__).resolve().parent / "results" / "train.json"


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


class StepTimer(TrainerCallback):
    """Wall time at every optimiser step's end."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.times.append(time.perf_counter())


def steady_step_s(times: list[float]) -> float:
    """Mean seconds per step after the first (which includes warm-up)."""
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return sum(gaps) / len(gaps) if gaps else float("nan")


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


def bench_sft(cfg: RunConfig, model: str, steps: int, scratch: Path, group_by_length: bool | None = None) -> dict:
    it = IterPaths(scratch / "iter_0")
    sft.write_data(cfg.seed_data, cfg.judge, cfg.sft, it, cfg.seed)
    examples = [json.loads(line) for line in it.sft_data.read_text().splitlines()]
    sft_cfg = dataclasses.replace(cfg.sft, max_steps=steps, save_steps=0)
    if group_by_length is not None:
        sft_cfg = dataclasses.replace(sft_cfg, group_by_length=group_by_length)
    trainer = sft.build_trainer(model, examples, sft_cfg, str(scratch / "sft"), cfg.seed)
    timer = StepTimer()
    trainer.add_callback(timer)
    padding = Padding(trainer.data_collator, steps * sft_cfg.grad_accum)
    trainer.data_collator = padding
    trainer.train()
    per_step_examples = sft_cfg.batch_size * sft_cfg.grad_accum
    tokens_per_step = padding.real / steps  # the real tokens of the batches these steps trained on
    r = measured(trainer, timer, tokens_per_step, train_bf16(sft_cfg.precision), len(examples), per_step_examples)
    return {
        **r,
        "group_by_length": sft_cfg.group_by_length,
        "padded_tokens_per_step": round(padding.padded / steps),
        "padding_fraction": round(1 - padding.real / padding.padded, 3),
    }


def bench_dpo(cfg: RunConfig, model: str, steps: int, scratch: Path) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    # pairs with the loop's shapes: our seed instructions, the reference answer as chosen and its first
    # third as rejected (what is measured is the speed, not what is learnt)
    rows = [json.loads(line) for line in Path(cfg.seed_data.instructions).read_text().splitlines() if line.strip()]
    pairs = []
    for r in rows:
        text = r.get("response") or r.get("output") or ""
        if text:
            prompt = [{"role": "user", "content": r.get("instruction") or r.get("text")}]
            chosen = [{"role": "assistant", "content": text}]
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": chosen,
                    "rejected": [{"role": "assistant", "content": text[: len(text) // 3]}],
                }
            )
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
    trainer = DPOTrainer(
        model=policy, args=args, train_dataset=datasets.Dataset.from_list(pairs), processing_class=tokenizer
    )
    timer = StepTimer()
    trainer.add_callback(timer)
    lengths = [
        len(chat_ids(tokenizer, p["prompt"] + p[side])[: d.max_length])
        for p in pairs
        for side in ("chosen", "rejected")
    ]
    trainer.train()
    tokens_per_step = sum(lengths) / len(pairs) * d.batch_size * d.grad_accum  # chosen + rejected sequences
    return measured(trainer, timer, tokens_per_step, train_bf16(d.precision), len(pairs), d.batch_size * d.grad_accum)


def measured(trainer, timer: StepTimer, tokens_per_step: float, bf16: bool, examples: int, per_step: int) -> dict:
    n_params = sum(p.numel() for p in trainer.model.parameters())
    step_s = steady_step_s(timer.times)
    tokens_s = tokens_per_step / step_s
    return {
        "precision": "bf16" if bf16 else "fp32",
        "steps_timed": max(0, len(timer.times) - 1),
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
        "--group-by-length", action="store_true", help="SFT also with length-grouped batches (sft_grouped)"
    )
    args = parser.parse_args()
    cfg = RunConfig()
    model = resolve_model(cfg.model, cfg.cache_dir)
    result: dict = {"machine": cpu_flags(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": args.steps}
    ceilings = {p: round(gemm_gflops(p), 1) for p in ("fp32", "bf16")}
    result["gemm_gflops"] = ceilings
    print(f"GEMM 2048^3: fp32 {ceilings['fp32']} GFLOP/s, bf16 {ceilings['bf16']} GFLOP/s")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        jobs = [("sft", lambda: bench_sft(cfg, model, args.steps, Path(scratch)))]
        if args.group_by_length:
            jobs.append(
                ("sft_grouped", lambda: bench_sft(cfg, model, args.steps, Path(scratch), group_by_length=True))
            )
        jobs.append(("dpo", lambda: bench_dpo(cfg, model, args.steps, Path(scratch))))
        for name, job in jobs:
            if args.only not in (None, name.removesuffix("_grouped")):
                continue
            r = job()
            r["fraction_of_ceiling"] = round(r["achieved_gflops"] / ceilings[r["precision"]], 3)
            result[name] = r
            print(
                f"{name}: {r['s_per_step']} s/step, {r['real_tokens_per_s']} tok/s, {r['achieved_gflops']} GFLOP/s "
                f"= {r['fraction_of_ceiling']:.0%} of the {r['precision']} GEMM ceiling"
            )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_json(OUT, result)
    print(OUT)


if __name__ == "__main__":
    main()
