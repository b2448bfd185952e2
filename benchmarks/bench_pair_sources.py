"""Which pairs make the model better? `pairs.source` judge / checker / judge_checked from the same seed SFT, each
for N iterations of the default loop, then every model on our held-out checkable instructions.

Runs   iterations/src-judge (the default loop, `pairs.source=judge`), then src-checker and src-judge_checked.
       The three runs share iter_0 (the seed SFT: the same model, data, settings and seed) and iteration 1's
       prompts, candidates and judgements (the same model M1 and seed): the later runs take them from the store
       of finished stages (`reuse`, `selfreward.store`) and compute everything from the pairs stage on. Later
       iterations start from different models and run in full.
Writes benchmarks/results/pair_sources.json (with the CPU's flags and the date): per run and iteration, the
       model's prompt-level strict accuracy on the held-out set with the paired gain over M1 (interval), the
       judge's agreement with the checkers on that iteration's candidates (interval, pairs), pair counts by
       source, mean chosen/rejected tokens; and prints a table.

    make bench-pair-sources BENCH_ARGS="--iterations 1 --limit 120"
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_flags

from selfreward.artifacts import RunPaths, read_json, read_jsonl, write_json
from selfreward.constraints.agreement import judge_checker_agreement

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "pair_sources.json"
SOURCES = ("judge", "checker", "judge_checked")


def selfreward(*args: str) -> None:
    command = [sys.executable, "-m", "selfreward", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def share_answers(first: RunPaths, run: RunPaths) -> None:
    """Copy M0's and M1's evaluation answers from the first run (the evaluation keys them by the model's content,
    so they are reused as they are). The stages the runs share come from the store of finished stages."""
    answers = run.evaluate_dir / "answers"
    answers.mkdir(parents=True, exist_ok=True)
    for label in ("M0", "M1"):
        for suffix in (".jsonl", ".json"):
            path = first.evaluate_dir / "answers" / f"{label}{suffix}"
            if path.exists() and not (answers / path.name).exists():
                shutil.copy2(path, answers / path.name)


def rows_of(run: RunPaths, evaluate: dict) -> list[dict]:
    by_model = {r["model"]: r for r in evaluate.get("rows", [])}
    rows = []
    for k in run.iterations():
        it = run.iteration(k)
        if k == 0 or not it.metrics.exists():
            continue
        stages = read_json(it.metrics).get("stages", {})
        # from the judgements file itself: a shared iteration's judgements stage ran in the first run only
        agreement = judge_checker_agreement(read_jsonl(it.judgements))
        pairs = read_jsonl(it.pairs) if it.pairs.exists() else []
        model = by_model.get(f"M{k + 1}", {})
        rows.append(
            {
                "iteration": k,
                "model": f"M{k + 1}",
                "prompt_strict": model.get("prompt_strict"),
                "prompt_loose": model.get("prompt_loose"),
                "gain_vs_M1": (model.get("gain_vs_M1") or {}).get("prompt_strict"),
                "mean_answer_tokens": model.get("mean_tokens"),
                "cut_off": model.get("cut_off"),
                "judge_checker_agreement": agreement.get("judge_checker_agreement"),
                "judge_checker_ci": agreement.get("judge_checker_ci"),
                "judge_checker_pairs": agreement.get("judge_checker_pairs"),
                "candidate_prompt_strict": agreement.get("candidate_prompt_strict"),
                "pairs": len(pairs),
                "pairs_by_source": {s: sum(p.get("source") == s for p in pairs) for s in SOURCES},
                "mean_chosen_tokens": sum(p["chosen_tokens"] for p in pairs) / len(pairs) if pairs else None,
                "mean_rejected_tokens": sum(p["rejected_tokens"] for p in pairs) / len(pairs) if pairs else None,
                "dpo_steps": stages.get("dpo", {}).get("steps"),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="held-out prompts evaluated (0: all)")
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--config", default="configs/default.yaml")
    args = parser.parse_args()
    sources = args.sources.split(",")
    runs = {s: RunPaths(ROOT / "iterations" / f"src-{s}") for s in sources}
    start = time.time()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_flags(),
        "command": " ".join(["python", *sys.argv]),
        "config": args.config,
        "iterations": args.iterations,
        "eval_limit": args.limit,
        "runs": {},
    }
    first = runs[sources[0]]
    for source, run in runs.items():
        if run is not first:
            share_answers(first, run)
        t0 = time.time()
        selfreward(
            "iterate", "--config", args.config, "-n", str(args.iterations), f"run_name={run.root.name}",
            f"pairs.source={source}",
        )  # fmt: skip
        t1 = time.time()
        selfreward("evaluate", str(run.root), "--limit", str(args.limit))
        evaluate = read_json(run.evaluate)
        result["runs"][source] = {
            "run": str(run.root.relative_to(ROOT)),
            "iterate_s": round(t1 - t0),
            "evaluate_s": round(time.time() - t1),
            "M0": {k: evaluate["rows"][0].get(k) for k in ("prompt_strict", "prompt_loose", "mean_tokens", "cut_off")},
            "M1": {k: evaluate["rows"][1].get(k) for k in ("prompt_strict", "prompt_loose", "mean_tokens", "cut_off")},
            "iterations": rows_of(run, evaluate),
        }
        write_json(OUT, {**result, "wall_s": round(time.time() - start)})  # after each run: nothing lost
    print(f"wrote {OUT}")
    for source, r in result["runs"].items():
        for row in r["iterations"]:
            g = row["gain_vs_M1"] or {}
            print(
                f"{source:14s} iter {row['iteration']}: strict {row['prompt_strict']['value']:.3f} "
                f"gain vs M1 {g.get('value', float('nan')):+.3f} [{g.get('ci_low', float('nan')):+.3f}, "
                f"{g.get('ci_high', float('nan')):+.3f}] judge-checker {row['judge_checker_agreement']} "
                f"pairs {row['pairs']} {row['pairs_by_source']}"
            )


if __name__ == "__main__":
    main()
