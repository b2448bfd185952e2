"""The planner against a finished run: every stage's planned memory beside the peak the run measured (its
metrics.json `peak_rss_gib`: the process tree's proportional set size, sampled every 2 s).

Reads  iterations/<run>/config.yaml, iter_0/metrics.json and iter_1/metrics.json
Writes benchmarks/results/plan_vs_measured.json (with the CPU's flags and the date) and prints a table.

    make bench-plan RUN=iterations/default
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from machine import cpu_flags

from selfreward.artifacts import RunPaths, read_json, write_json
from selfreward.config import load_config
from selfreward.planner import plan, this_machine

OUT = Path(__file__).resolve().parent / "results" / "plan_vs_measured.json"
STAGES = {"seed sft": (0, "sft"), "prompts": (1, "prompts"), "candidates": (1, "candidates"),
          "judgements": (1, "judgements"), "dpo": (1, "dpo")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="iterations/default")
    args = parser.parse_args()
    run = RunPaths(Path(args.run))
    cfg = load_config(run.config)
    hw = this_machine()
    _, source, planned = plan(cfg, hw)
    rows = []
    for st in planned:
        k, name = STAGES[st.stage]
        metrics = read_json(run.iteration(k).metrics)["stages"].get(name, {})
        measured = metrics.get("peak_rss_gib")
        rows.append(
            {
                "stage": st.stage,
                "planned_gib": round(st.gib, 3),
                "measured_gib": measured,
                "ratio": round(st.gib / measured, 3) if measured else None,
            }
        )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_flags(),
        "run": args.run,
        "config": {"model": cfg.model, "shape_from": source},
        "command": f"python benchmarks/bench_plan.py --run {args.run}",
        "rows": rows,
    }
    write_json(OUT, result)
    for r in rows:
        print(f"{r['stage']:12s} planned {r['planned_gib']:6.2f} GiB, measured {r['measured_gib']} GiB, {r['ratio']}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
