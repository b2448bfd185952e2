"""The check for a machine with a GPU (`make gpu-smoke` installs ENGINE=gpu from PyPI first): no hub access (the
embedded model), one JSON of results in benchmarks/results/gpu_smoke.json, ~10 minutes on one GPU when it
works (each step's time limit is a ceiling for a step that hangs, not the plan).

Steps, each a child process with its own time limit, run one after another (a failed step is recorded and
the next one still runs):
  1. one short iteration of the embedded model on CUDA: vLLM, bf16 engine and training (`iterate`);
  2. the engine benchmark, vLLM vs transformers on 16 prompts (`bench_engines.py`);
  3. with 2+ GPUs: DPO of that iteration again on every GPU (`launch.num_processes=N`, DDP), then under
     FSDP2 (`launch.fsdp=true`), each saved model compared with the one-GPU model (shapes, and it loads);
  4. the short iteration's generation stages again through a launched `vllm serve` (`engine.backend=server`).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from selfreward.artifacts import RunPaths

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "gpu_smoke.json"
RUN = "gpu-smoke"
FLAGS = ["--config", "configs/default.yaml", "--iterations", "1"]  # flags before the key=value overrides
SHORT = [
    f"run_name={RUN}", "engine.backend=vllm", "engine.dtype=bfloat16", "sft.precision=bf16", "dpo.precision=bf16",
    "prompt_gen.num_prompts=16", "sft.max_steps=10",
    # the same effective batch (and fingerprint) on 1 and N GPUs: accumulation 8 divides by 1, 2, 4, 8
    "dpo.grad_accum=8", "sft.grad_accum=8", "dpo.min_pairs=2",
]  # fmt: skip


def step(name: str, cmd: list[str], timeout: int, results: dict) -> bool:
    start = time.perf_counter()
    log = OUT.parent / f"gpu_smoke.{name}.log"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        # its own process group, killed whole on timeout: launcher workers and vLLM engines hold the GPUs
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
    tail = log.read_text(errors="replace")[-2000:]
    results["steps"][name] = {"rc": rc, "seconds": round(time.perf_counter() - start, 1), "cmd": cmd[2:]}
    if rc:
        results["steps"][name]["tail"] = tail
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))  # after every step: a killed smoke keeps what it measured
    print(f"{name}: rc {rc} in {results['steps'][name]['seconds']} s", flush=True)
    return rc == 0


def compare_models(a: Path, b: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    same_shapes = x.keys() == y.keys() and all(x[k].shape == y[k].shape for k in x)
    diff = max((x[k].float() - y[k].float()).abs().max().item() for k in x) if same_shapes else None
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(a, use_safetensors=True, dtype=torch.bfloat16)
    return {"same_tensors_and_shapes": same_shapes, "max_abs_weight_diff": diff}


def main() -> None:
    import torch

    py = sys.executable
    gpus = torch.cuda.device_count()
    results: dict = {
        "machine": {
            "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "steps": {},
    }
    if not gpus:
        sys.exit("gpu-smoke: no CUDA device visible (torch.cuda.device_count() == 0)")
    run = ROOT / "iterations" / RUN
    subprocess.run(["rm", "-rf", str(run)], check=True)
    iterate = [py, "-m", "selfreward", "iterate", *FLAGS]
    ok = step("iterate_1gpu", [*iterate, *SHORT], 420, results)
    if ok:
        metrics = json.loads((run / "iter_1" / "metrics.json").read_text())
        results["iteration"] = {k: metrics["stages"].get(k) for k in ("candidates", "judgements", "pairs", "dpo")}
        if (metrics["stages"].get("dpo") or {}).get("skipped"):
            results["steps"]["iterate_1gpu"]["problem"] = "DPO was skipped (too few pairs): nothing to compare"
    step("bench_engines", [py, "benchmarks/bench_engines.py", "--prompts", "16"], 300, results)
    if ok and gpus >= 2:
        one = run / "iter_1" / "model"
        (run / "iter_1" / "model.1gpu").unlink(missing_ok=True)
        subprocess.run(["cp", "-r", str(one), str(run / "iter_1" / "model.1gpu")], check=True)
        for name, extra in (("dpo_ddp", []), ("dpo_fsdp2", ["launch.fsdp=true"])):
            RunPaths(run).iteration(1).marker("dpo").unlink(missing_ok=True)  # DPO runs again, on every GPU
            cmd = [*iterate, *SHORT, f"launch.num_processes={gpus}"]
            if step(name, cmd + extra, 300, results):
                results["steps"][name]["vs_1gpu"] = compare_models(one, run / "iter_1" / "model.1gpu")
    # the engine settings are in the generation stages' fingerprints: --force redoes them on the server
    cmd = [*iterate, "--force", *SHORT, "engine.backend=server"]
    step("iterate_on_server", cmd + ["engine.launch_server=true"], 360, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
