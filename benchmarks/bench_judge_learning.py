"""Does the judge learn? The default loop beside its judge-training variants, from the same seed SFT: per iteration
the judge's accuracy on human labels (rubric scores and both-order comparisons, with intervals) and its agreement
with the checkers, and the model's accuracy on our held-out checkable instructions with its gain over M1.

Runs   the base run (`--base`, e.g. iterations/src-judge of `make bench-pair-sources`: the default loop) is measured
       as it is; each variant runs as iterations/jl-<variant> from the base's seed SFT: iter_0 and, where the
       variant does not change them, iteration 1's prompts, candidates and judgements are the base's files
       (adopted: `ADOPT`), so the variants differ from the default loop only where their settings do. With a base
       made by the current code, the store of finished stages (`reuse`) does the same without adopting.
       Variants: meta (`meta_judge.enabled`), pairwise (`judge.mode=pairwise`), anchored (`pairs.rejected_from=
       initial`, from iteration 2 on).
Writes benchmarks/results/judge_learning.json (with the CPU's flags, the date and the command), and prints a table.

    make bench-judge-learning BENCH_ARGS="--base iterations/src-judge --variants meta --iterations 1 \\
        --labels LABELS.jsonl --judge-limit 60 --limit 120"
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
OUT = ROOT / "benchmarks" / "results" / "judge_learning.json"
VARIANTS = {
    "meta": (["meta_judge.enabled=true"], ("prompts", "candidates", "judgements")),
    "pairwise": (["judge.mode=pairwise"], ("prompts", "candidates")),
    "anchored": (["pairs.rejected_from=initial"], ("prompts", "candidates", "judgements")),
}
"""Overrides of each variant, and the iteration-1 stages it shares with the default loop."""


def selfreward(*args: str) -> None:
    command = [sys.executable, "-m", "selfreward", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def measure_judge(run: Path, labels: list[str], limit: int, k: int) -> None:
    """The judge accuracy of iter_k's model on the label files, into iter_k/metrics.json (in a child process: one
    torch job at a time, and its memory is freed when it ends)."""
    overrides = [f"eval.judge_labels=[{','.join(labels)}]", f"eval.judge_limit={limit}"]
    code = (
        "import sys; from pathlib import Path; from selfreward.config import load_config; "
        "from selfreward.artifacts import RunPaths; from selfreward.evaluation.judge_eval import "
        "measure_iteration_judge as m; run = RunPaths(Path(sys.argv[1])); "
        "m(load_config(run.config, sys.argv[3:]), run, int(sys.argv[2]))"
    )
    print(f"+ judge accuracy of {run.name}/iter_{k}", flush=True)
    subprocess.run([sys.executable, "-c", code, str(run), str(k), *overrides], check=True, cwd=ROOT)


ADOPT = """
import sys
from selfreward.artifacts import read_json
from selfreward.cli import main
from selfreward.loop import judge, pipeline, prompt_gen, responses, sft

base, shared, argv = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]

def old(k, stage):
    return lambda *args, **kwargs: read_json(f"{base}/iter_{k}/metrics.json")["stages"][stage]

def in_iteration_1(real, stage):  # the base's metrics in iteration 1 (its files are there), the real stage after it
    def run(*args, **kwargs):
        it = next(a for a in args if hasattr(a, "candidates"))
        return old(1, stage)() if it.root.name == "iter_1" else real(*args, **kwargs)
    return run

sft.write_data = old(0, "sft_data")
real_train = pipeline.train
pipeline.train = lambda cfg, run, module, *rest: (
    old(0, "sft")() if module == "selfreward.loop.sft" else real_train(cfg, run, module, *rest)
)
for module, stage in ((prompt_gen, "prompts"), (responses, "candidates"), (judge, "judgements")):
    if stage in shared:
        module.run = in_iteration_1(module.run, stage)
sys.exit(main(argv))
"""
"""The variant's `selfreward iterate` in a child process whose seed SFT and shared iteration-1 stages return the base
run's metrics instead of computing (their files were copied by `start_from`): the stage runner fingerprints and
marks them as the current code does, and everything after them runs for real."""


def start_from(base: RunPaths, run: RunPaths, shared: tuple[str, ...]) -> None:
    """The base's seed SFT (iter_0's files) and iteration 1's `shared` files, without stage markers, once; and
    M0's and M1's evaluation answers (keyed by the model's content)."""
    if not run.iteration(0).root.exists():
        shutil.copytree(base.iteration(0).root, run.iteration(0).root, ignore=shutil.ignore_patterns(".stages"))
    src, dst = base.iteration(1), run.iteration(1)
    if not dst.root.exists():
        dst.root.mkdir(parents=True)
        for stage in shared:
            shutil.copy2(getattr(src, stage), getattr(dst, stage))
        if "prompts" in shared:
            shutil.copy2(src.prompts_rejected, dst.prompts_rejected)
    answers = run.evaluate_dir / "answers"
    answers.mkdir(parents=True, exist_ok=True)
    for path in (base.evaluate_dir / "answers").glob("M[01].json*"):
        shutil.copy2(path, answers / path.name)


def rows_of(run: RunPaths) -> list[dict]:
    evaluate = {r["model"]: r for r in (read_json(run.evaluate).get("rows", []) if run.evaluate.exists() else [])}
    rows = []
    for k in [0, *run.iterations()]:
        it = run.iteration(k)
        if not it.metrics.exists():
            continue
        metrics = read_json(it.metrics)
        stages = metrics.get("stages", {})
        model = evaluate.get(f"M{k + 1}", {})
        row = {
            "iteration": k,
            "model": f"M{k + 1}",
            "judge_accuracy": metrics.get("judge_accuracy"),
            "prompt_strict": model.get("prompt_strict"),
            "gain_vs_M1": (model.get("gain_vs_M1") or {}).get("prompt_strict"),
            "mean_answer_tokens": model.get("mean_tokens"),
        }
        if k >= 1:
            row.update(
                {
                    "judge_checker": judge_checker_agreement(read_jsonl(it.judgements)),
                    "pairs": stages.get("pairs", {}).get("pairs"),
                    "judge_pairs": stages.get("pairs", {}).get("judge_pairs"),
                    "meta_outcomes": stages.get("meta_judgements", {}).get("outcomes"),
                    "rejected_from": stages.get("pairs", {}).get("rejected_from"),
                    "dpo_steps": stages.get("dpo", {}).get("steps"),
                }
            )
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="a finished default-loop run (the seed SFT every variant uses)")
    parser.add_argument("--variants", default="meta", help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--labels", required=True, help="comma-separated human-label files")
    parser.add_argument("--judge-limit", type=int, default=60, help="label items judged per model")
    parser.add_argument("--limit", type=int, default=120, help="held-out constraint prompts evaluated")
    args = parser.parse_args()
    labels = args.labels.split(",")
    base = RunPaths(ROOT / args.base)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_flags(),
        "command": " ".join(["python", *sys.argv]),
        "labels": labels,
        "judge_limit": args.judge_limit,
        "eval_limit": args.limit,
        "iterations": args.iterations,
        "runs": {},
    }
    start = time.time()
    for k in [k for k in range(args.iterations + 1) if k == 0 or k in base.iterations()]:  # M1 (seed SFT), M2, ...
        measure_judge(base.root, labels, args.judge_limit, k)
    result["runs"]["default"] = {"run": str(base.root.relative_to(ROOT)), "iterations": rows_of(base)}
    write_json(OUT, {**result, "wall_s": round(time.time() - start)})
    for variant in args.variants.split(","):
        overrides, shared = VARIANTS[variant]
        run = RunPaths(ROOT / "iterations" / f"jl-{variant}")
        start_from(base, run, shared)
        t0 = time.time()
        judging = [f"eval.judge_labels=[{','.join(labels)}]", f"eval.judge_limit={args.judge_limit}"]
        iterate = [
            "iterate", "--config", str(base.config), "-n", str(args.iterations), f"run_name={run.root.name}",
            "reuse=false", *overrides, *judging,
        ]  # fmt: skip
        print("+ adopting the base's seed SFT and", ",".join(shared), "then", " ".join(iterate), flush=True)
        subprocess.run([sys.executable, "-c", ADOPT, str(base.root), ",".join(shared), *iterate], check=True, cwd=ROOT)
        t1 = time.time()
        selfreward("evaluate", str(run.root), "--limit", str(args.limit))
        result["runs"][variant] = {
            "run": str(run.root.relative_to(ROOT)),
            "overrides": overrides,
            "iterate_s": round(t1 - t0),
            "evaluate_s": round(time.time() - t1),
            "iterations": rows_of(run),
        }
        write_json(OUT, {**result, "wall_s": round(time.time() - start)})  # after each run: nothing lost
    print(f"wrote {OUT}")
    for name, r in result["runs"].items():
        for row in r["iterations"]:
            acc = next(iter((row.get("judge_accuracy") or {}).values()), {})
            strict = (row.get("prompt_strict") or {}).get("value")
            print(
                f"{name:9s} {row['model']}: judge rubric {acc.get('accuracy')} both orders "
                f"{acc.get('direct_accuracy')} | strict {strict} gain {row.get('gain_vs_M1') or {}}"
            )


if __name__ == "__main__":
    main()
