"""Can a sentence addressed to the grader buy points, and which defence stops it without making the judge worse?

For each defence (the judge's settings), with the run's M1 as the judge:
  probe     the `--limit` lowest-scored candidates of iteration 1, judged as they are and with each style's sentence
            at the end (`selfreward judge-robustness`): the mean score shift with its paired interval, and how often
            the both-order comparison of the answer against its prompt's best candidate flips
  humans    rubric accuracy on the first `--label-limit` items of `--labels` (`judge-eval`), with its interval
  checkers  agreement with the checkers on every checked candidate of iteration 1, re-judged with the defence
and, from the run's own metrics, every iteration's share of candidates with evaluator-directed text (its Wilson
interval) and how many chosen and rejected answers carried it.

Reads  a finished run (`--run`, e.g. iterations/default after `make iterate N=3`): config.yaml, iter_0/model,
       iter_1/{prompts,candidates,judgements}.jsonl, iter_K/metrics.json; a human-label file
Writes benchmarks/results/persuasion.json (with the CPU's flags, the date and the command); the probe's rows also go
       to the run's judge_robustness.json

    make bench-persuasion RUN=iterations/default LABELS=FILE [BENCH_ARGS="--sentences ours,unseen --by-iteration"]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from machine import cpu_flags

from selfreward.artifacts import RunPaths, read_json, read_jsonl, write_json
from selfreward.config import load_config
from selfreward.constraints.agreement import judge_checker_agreement
from selfreward.evaluation import judge_eval, persuasion
from selfreward.generation import open_generator
from selfreward.inputs import load_labels
from selfreward.loop.judge import judge_texts
from selfreward.models import model_of_iteration

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "persuasion.json"
DEFENCES = {
    "none": ["judge.strip_directed=false"],
    "guarded template": ["judge.template=prompts/judge_guarded.txt", "judge.strip_directed=false"],
    "strip directed sentences": ["judge.strip_directed=true"],
    "both": ["judge.template=prompts/judge_guarded.txt", "judge.strip_directed=true"],
}
"""Each defence as config overrides of the run's judge."""
PROBE_FIELDS = ("sentences", "style", "placement", "shift", "ci_low", "ci_high", "n", "rose", "fell", "pairs_won",
                "flipped", "flip_rate", "flip_ci")  # fmt: skip


def checker_agreement(cfg, run: RunPaths, model: str) -> dict:  # noqa: ANN001 - a RunConfig
    """Iteration 1's checked candidates judged again with `cfg.judge`; agreement with the checkers."""
    it = run.iteration(1)
    prompts = {p["prompt_id"]: p["text"] for p in read_jsonl(it.prompts)}
    texts = {c["candidate_id"]: c["text"] for c in read_jsonl(it.candidates)}
    checked = [j for j in read_jsonl(it.judgements) if j.get("checks") and j["candidate_id"] in texts]
    with open_generator(cfg.engine, model, Path(cfg.cache_dir), seed=cfg.seed) as gen:
        items = [(prompts[j["prompt_id"]], texts[j["candidate_id"]]) for j in checked]
        scores = [x.score for x in judge_texts(gen, cfg.judge, items, seed=cfg.seed)]
    rejudged = [
        {"prompt_id": j["prompt_id"], "checks": j["checks"], "score": s} for j, s in zip(checked, scores, strict=True)
    ]
    result = judge_checker_agreement(rejudged, seed=cfg.seed)
    return {k: result[k] for k in ("judge_checker_agreement", "judge_checker_ci", "judge_checker_pairs")}


def directed_by_iteration(run: RunPaths) -> list[dict]:
    """Each iteration's share of candidates with evaluator-directed text, and in its pairs, from metrics.json."""
    rows = []
    for k in run.iterations():
        stages = read_json(run.iteration(k).metrics).get("stages", {})
        share = stages.get("judgements", {}).get("evaluator_directed")
        if share is None:
            continue
        pairs = stages.get("pairs", {})
        rows.append(
            {
                "iteration": k,
                **share,
                "pairs": pairs.get("pairs"),
                "chosen": pairs.get("evaluator_directed_chosen"),
                "rejected": pairs.get("evaluator_directed_rejected"),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="iterations/default")
    parser.add_argument("--labels", required=True, help="a human-label file (the formats judge-eval reads)")
    parser.add_argument("--label-limit", type=int, default=60)
    parser.add_argument("--limit", type=int, default=30, help="lowest-scored candidates of iteration 1 probed")
    parser.add_argument("--defences", default=",".join(DEFENCES), help="comma-separated, of: " + ", ".join(DEFENCES))
    parser.add_argument(
        "--sentences",
        default="ours",
        help="comma-separated sentence sets: ours, unseen (other words, never used to write the detector); rows are "
        "added to the file's, the accuracies measured once per defence",
    )
    parser.add_argument(
        "--by-iteration",
        action="store_true",
        help="also each later model of the run (M2, M3, ...) as the judge, reading the answers as written: is the "
        "judge easier to flatter after DPO on its own pairs?",
    )
    args = parser.parse_args()
    run = RunPaths(Path(args.run))
    labelled = load_labels(args.labels)[: args.label_limit]
    items, pairs = persuasion.items_from_iteration(run, 1, args.limit)
    before = read_json(OUT) if OUT.exists() else {}
    same = before.get("run") == args.run and before.get("probed") == len(items)
    same_labels = same and (before.get("labels"), before.get("label_items")) == (Path(args.labels).name, len(labelled))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_flags(),
        "commands": ((before.get("commands") or ([before["command"]] if "command" in before else [])) if same else [])
        + [" ".join(["python benchmarks/bench_persuasion.py", *(f"'{a}'" if " " in a else a for a in sys.argv[1:])])],
        "run": args.run,
        "labels": Path(args.labels).name,
        "label_items": len(labelled),
        "probed": len(items),
        "probed_pairs": len(pairs),
        "directed_by_iteration": directed_by_iteration(run),
        "defences": before.get("defences", {}) if same else {},
    }
    result["by_model"] = before.get("by_model", {}) if same else {}
    for name in [d for d in args.defences.split(",") if d]:  # empty: none (e.g. only --by-iteration)
        cfg = load_config(run.config, DEFENCES[name])
        model = model_of_iteration(cfg, run, 0)
        start = time.perf_counter()
        old = result["defences"].get(name, {})
        probe = old.get("probe", [])
        for sentence_set in args.sentences.split(","):
            rows = persuasion.judge_robustness(
                cfg, run, ("M1", model), "iter_1", items, pairs, None, None, sentence_set
            )
            probe = [r for r in probe if r.get("sentences", "ours") != sentence_set]
            probe += [{k: r.get(k) for k in PROBE_FIELDS} for r in rows]
        if "humans" in old and same_labels:  # the accuracies do not depend on the sentences: measured once
            humans = old["humans"]
        else:
            row = judge_eval.evaluate(cfg, f"M1-{name.replace(' ', '-')}", model, args.labels, labelled, run)
            humans = {k: row.get(k) for k in ("accuracy", "ci_low", "ci_high", "n_pairs", "parse_failure_rate")}
        result["defences"][name] = {
            "overrides": DEFENCES[name],
            "probe": probe,
            "humans": humans,
            "checkers": old.get("checkers") or checker_agreement(cfg, run, model),
            "seconds": round(old.get("seconds", 0) + time.perf_counter() - start, 1),
        }
        write_json(OUT, result)  # after every defence: a stopped run keeps what it measured
        d = result["defences"][name]
        print(name, [f"{r['style']} {r['shift']}" for r in d["probe"]], d["humans"], d["checkers"], flush=True)
    if args.by_iteration:
        cfg = load_config(run.config, ["judge.strip_directed=false"])  # as written: what the judge itself does
        for k in run.iterations():
            if not run.iteration(k).model.exists():
                continue
            label = f"M{k + 1}"
            rows = persuasion.judge_robustness(
                cfg, run, (label, model_of_iteration(cfg, run, k)), "iter_1", items, pairs
            )
            result["by_model"][label] = [{f: r.get(f) for f in PROBE_FIELDS} for r in rows]
            write_json(OUT, result)
            print(label, [f"{r['style']} {r['shift']}" for r in rows], flush=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
