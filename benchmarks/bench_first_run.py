"""What a new user waits for on this machine: `make install` and `make iterate N=3` from a fresh clone, then the
same command again as a second run (a new run name, so nothing is resumed: what it does not recompute comes from
the stage store), and a second run that changes one iteration setting.

Reads  the committed HEAD of this checkout (cloned into --workdir), then the runs' own iter_K/metrics.json
Writes benchmarks/results/first_run_<cpu class>.json (one file per CPU class: amx, avx512_bf16, avx2), with the
       CPU's model and flags, the date and the commit; --workdir/timings.json after every step, so that a lost
       session resumes where it stopped (--resume)

    make bench-first-run                      # ~25-110 min on a 2-core CPU: run it alone, nothing else on the CPU
    make bench-first-run BENCH_ARGS="--change dpo.beta=0.2"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_flags

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def cpu_class(flags: list[str]) -> str:
    """The CPU classes whose speed differs most for this project: native bf16 matmul with AMX, with AVX512-BF16,
    or neither (fp32 everywhere)."""
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "avx2"


def timed(step: str, cmd: list[str], workdir: Path, timings: dict, log: Path) -> None:
    """Run `cmd` in `workdir` (its output to `log`) unless `step` finished before with the same command; record its
    seconds. A step that had started and not finished is run again and marked `resumed` (its time is then only
    what was left: the run resumes and the stage store holds what it had finished)."""
    command = " ".join(cmd)
    done = timings.get(step, {})
    if done.get("seconds") is not None:
        if done["command"] != command:
            sys.exit(f"{step} was timed as `{done['command']}`, not `{command}`: use another --workdir")
        print(f"{step}: done before ({done['seconds']:.0f} s)")
        return
    resumed = "started" in done
    timings[step] = {"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (workdir / "timings.json").write_text(json.dumps(timings, indent=1))
    print(f"{step}: {command} (output in {log})", flush=True)
    start = time.perf_counter()
    with open(log, "a" if resumed else "w") as out:
        env = os.environ | {"HF_HUB_OFFLINE": "1"}
        rc = subprocess.run(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if rc.returncode != 0:
        sys.exit(f"{step} failed (exit {rc.returncode}): see {log}")
    timings[step].update(seconds=round(seconds, 1), ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if resumed:
        timings[step]["resumed"] = True
    (workdir / "timings.json").write_text(json.dumps(timings, indent=1))
    print(f"{step}: {seconds:.0f} s", flush=True)


def run_record(run: Path) -> dict:
    """Every iteration's stages of a finished run: seconds (0 when reused), where reused from, peak memory."""
    iterations = []
    for metrics_file in sorted(run.glob("iter_*/metrics.json"), key=lambda p: int(p.parent.name.split("_")[1])):
        metrics = json.loads(metrics_file.read_text())
        stages = {
            name: {
                "wall_s": s.get("wall_s"),
                "peak_rss_gib": s.get("peak_rss_gib"),
                **({"reused": True, "source_wall_s": s.get("source_wall_s")} if s.get("reused_from") else {}),
                **{k: s[k] for k in ("optimizer_steps", "prompts_kept", "pairs", "output_tokens_per_s") if k in s},
            }
            for name, s in metrics.get("stages", {}).items()
        }
        iterations.append(
            {
                "iteration": int(metrics_file.parent.name.split("_")[1]),
                "wall_s": metrics.get("wall_s"),
                "peak_rss_gib": metrics.get("peak_rss_gib"),
                "stages": stages,
            }
        )
    return {"run": run.name, "iterations": iterations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/selfreward-first-run"))
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument(
        "--change", default="dpo.beta=0.2", help="the iteration setting the third run changes (empty: no third run)"
    )
    parser.add_argument("--resume", action="store_true", help="go on in an existing --workdir (its timings.json)")
    args = parser.parse_args()
    work: Path = args.workdir
    if work.exists() and not args.resume:
        sys.exit(f"{work} exists: pass --resume to go on there, or remove it")
    if not work.exists():
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(work)], check=True)
    timings = json.loads((work / "timings.json").read_text()) if (work / "timings.json").exists() else {}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
    n = args.iterations
    runs = {"first": "default", "again": "again", "changed": "changed"}
    timed("install", ["make", "install"], work, timings, work / "install.log")
    timed("first", ["make", "iterate", f"N={n}"], work, timings, work / "first.log")
    timed("again", ["make", "iterate", f"N={n}", "ARGS=run_name=again"], work, timings, work / "again.log")
    if args.change:  # a --resume may add it later
        changed = ["make", "iterate", f"N={n}", f"ARGS=run_name=changed {args.change}"]
        timed("changed", changed, work, timings, work / "changed.log")
    cpu = cpu_flags()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu,
        "cpu_class": cpu_class(cpu["flags"]),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "commit": commit,
        "command": f'make bench-first-run BENCH_ARGS="--iterations {n} --change {args.change or chr(39) * 2}"',
        "iterations": n,
        "change": args.change,
        "venv_gib": round(sum(f.stat().st_size for f in (work / ".venv").rglob("*") if f.is_file()) / 2**30, 2),
        "steps": timings,
        "runs": {step: run_record(work / "iterations" / name) for step, name in runs.items() if step in timings},
    }
    out = RESULTS / f"first_run_{result['cpu_class']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}; the runs stay in {work} (remove it when done: it holds a venv)")


if __name__ == "__main__":
    main()
