"""Judge modes side by side: accuracy against human labels, digit mass / parse rate and speed.

For each model (default: the embedded M0; `--model` more, e.g. a run's iter_0/model = M1) one engine is
started, and the loop's own judge (`loop.judge.judge_texts`, the config's template) scores every response
of the first `--limit` items of each label file in each mode: `direct` (Score: prefilled right after
the prompt, one pass), `probabilities` (K justifications, then the digit distribution) and `sampled`
(K judgements, parse `Score: N`; `judge.max_tokens` 128 so the score line fits). Writes
benchmarks/results/judge_modes.json (with the CPU's flags) and prints a table.

    make bench-judge BENCH_ARGS="--limit 60 --model iterations/default/iter_0/model"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from machine import cpu_flags  # same folder: `python benchmarks/bench_judge_modes.py`

from selfreward.artifacts import write_json
from selfreward.config import RunConfig
from selfreward.evaluation.judge_metrics import pairwise_accuracy
from selfreward.generation import open_generator
from selfreward.inputs import load_labels
from selfreward.loop.judge import judge_texts
from selfreward.models import resolve_model

OUT = Path(__file__).resolve().parent / "results" / "judge_modes.json"
MODES = {"direct": {}, "probabilities": {"max_tokens": 64}, "sampled": {"max_tokens": 128}}


def one_mode(gen, cfg: RunConfig, mode: str, items: list) -> dict:  # noqa: ANN001 - a Generator
    judge_cfg = dataclasses.replace(cfg.judge, mode=mode, **MODES[mode])
    flat = [(item.prompt, r) for item in items for r in item.responses]
    start = time.perf_counter()
    judgements = judge_texts(gen, judge_cfg, flat, seed=cfg.seed)
    seconds = time.perf_counter() - start
    scores, pos = [], 0
    for item in items:
        scores.append([j.score for j in judgements[pos : pos + len(item.responses)]])
        pos += len(item.responses)
    acc = pairwise_accuracy(scores, [item.human_ranks for item in items], seed=cfg.seed)
    samples = [s for j in judgements for s in j.samples]
    masses = [s.digit_mass for s in samples if s.digit_mass is not None]
    return {
        "mode": mode,
        "samples_per_candidate": 1 if mode == "direct" else judge_cfg.samples,
        "items": len(items),
        "candidates": len(flat),
        "accuracy": acc["accuracy"],
        "ci_low": acc["ci_low"],
        "ci_high": acc["ci_high"],
        "judge_ties": acc["judge_ties"],
        "unscored_candidates": sum(j.score is None for j in judgements),
        "unscored_samples_rate": sum(s.score is None for s in samples) / len(samples) if samples else None,
        "errors": {e: sum(s.error == e for s in samples) for e in {s.error for s in samples if s.error}},
        "mean_digit_mass": sum(masses) / len(masses) if masses else None,
        "digit_mass_deciles": [sum(min(9, int(m * 10)) == d for m in masses) for d in range(10)] if masses else None,
        "seconds": round(seconds, 1),
        "seconds_per_100_candidates": round(100 * seconds / len(flat), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="more models to measure (folders)")
    parser.add_argument("--no-base", action="store_true", help="skip M0 (the embedded model), e.g. already measured")
    parser.add_argument("--limit", type=int, default=60, help="first N items of each label file")
    parser.add_argument("--modes", default="direct,probabilities,sampled")
    parser.add_argument("--labels", action="append", required=True, help="a human-label file (again for more)")
    args = parser.parse_args()
    cfg = RunConfig()
    models = [] if args.no_base else [("M0", resolve_model(cfg.model, cfg.cache_dir))]
    models += [(m, resolve_model(m, cfg.cache_dir)) for m in args.model]
    label_files = [p for p in args.labels if Path(p).exists()]
    rows = json.loads(OUT.read_text()).get("rows", []) if OUT.exists() else []
    for name, path in models:
        start = time.perf_counter()
        with open_generator(cfg.engine, path, Path(cfg.cache_dir), seed=cfg.seed) as gen:
            startup = round(time.perf_counter() - start, 1)
            for labels in label_files:
                items = load_labels(labels)[: args.limit]
                for mode in args.modes.split(","):
                    row = {"model": name, "labels": Path(labels).name, "engine": gen.engine_name, "startup_s": startup}
                    row.update(one_mode(gen, cfg, mode, items))
                    rows = [r for r in rows if (r["model"], r["labels"], r["mode"]) != (name, row["labels"], mode)]
                    rows.append(row)
                    write_json(OUT, {"rows": rows, "cpu": cpu_flags(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                    print(
                        json.dumps(
                            {
                                k: row[k]
                                for k in (
                                    "model",
                                    "labels",
                                    "mode",
                                    "accuracy",
                                    "ci_low",
                                    "ci_high",
                                    "mean_digit_mass",
                                    "unscored_samples_rate",
                                    "seconds_per_100_candidates",
                                )
                            }
                        ),
                        flush=True,
                    )
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
