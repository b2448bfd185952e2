"""How well a model judges, against human labels (`selfreward judge-eval`).

Reads  a human-label file (`inputs.load_labels`: pairwise, ranked or hh-rlhf JSONL, or a hub
       dataset name when online) and the models to evaluate: one model the config can name, or every
       finished model of a run (M0, iter_0, iter_1, ...)
Writes iterations/<run>/judge_eval.json             one row per (model, labels, judge mode, K), replaced on re-run:
                                                   pairwise accuracy with its bootstrap 95% interval, judge
                                                   ties, parse-failure rate, score distribution, ranking
                                                   metrics for ranked data, engine and seconds
       iterations/<run>/judge_eval/<model>__<labels>__<mode>-k<K>.jsonl   per item: human ranks, the judge's mean
                                                   score per response and each sample's score or error
                                                   and raw text

Every response is judged alone with the loop's judge (`judge.judge_texts`: the same prompt, K samples,
the same parser or digit probabilities as `judge.mode` says), and the mean scores are compared with the
human ranks by `judge_metrics` (definitions there). With `--pairwise` the model also compares the two
responses of each human-ranked pair directly, in both orders (`compare.both_orders`, the head-to-head
judge): a verdict that holds in both orders counts 1 or 0, one that flips with the order counts 1/2, and
`position_consistency` is the share that did not flip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from selfreward.artifacts import RunPaths, file_digest, model_digest, project_file, read_json, write_json, write_jsonl
from selfreward.config import RunConfig, fingerprint
from selfreward.evaluation import compare, judge_metrics
from selfreward.generation import open_generator
from selfreward.inputs import LabelledItem, load_labels
from selfreward.loop.judge import judge_texts
from selfreward.models import model_of_iteration, resolve_model
from selfreward.stats import mean, mean_with_ci
from selfreward.tracking import Tracker

log = logging.getLogger(__name__)


def evaluate(
    cfg: RunConfig,
    label: str,
    model: str,
    labels: str,
    items: list[LabelledItem],
    run: RunPaths,
    pairwise: bool = False,
) -> dict:
    """Judge every response of `items` with `model`; returns the row written to judge_eval.json."""
    start = time.perf_counter()
    pointwise = cfg.judge.mode != "pairwise"  # the pairwise judge only compares: its accuracy is the direct one
    pairwise = pairwise or not pointwise
    flat = [(item.prompt, r) for item in items for r in item.responses] if pointwise else []
    triples, human = _ranked_pairs(items) if pairwise else ([], [])
    template = cfg.judge.pairwise_template if not pointwise else cfg.compare.template
    with open_generator(cfg.engine, model, Path(cfg.cache_dir), seed=cfg.seed) as gen:
        judgements = judge_texts(gen, cfg.judge, flat, seed=cfg.seed) if flat else []
        pair_probs = compare.both_orders(gen, compare.load_template(template), triples) if triples else []
        engine = gen.engine_name
    per_item, i = [], 0
    for item in items:
        per_item.append(judgements[i : i + len(item.responses)] if pointwise else [])
        i += len(item.responses)
    scores = [[j.score for j in group] for group in per_item]
    ranks = [item.human_ranks for item in items]
    samples = [s.score for j in judgements for s in j.samples]
    row: dict = {
        "model": label,
        "labels": labels,
        "path": model,
        "items": len(items),
        "responses": len(flat),
        "judge_mode": cfg.judge.mode,
        "samples": cfg.judge.samples,
    }
    if pointwise:
        row.update(
            {
                **judge_metrics.pairwise_accuracy(scores, ranks, seed=cfg.seed),
                "parse_failure_rate": judge_metrics.parse_failure_rate(samples),
                "score_distribution": judge_metrics.score_distribution(j.score for j in judgements),
                "mean_score": mean([j.score for j in judgements if j.score is not None]),
            }
        )
    if pointwise and any(len(item.responses) > 2 for item in items):
        row.update({f"rank_{k}": v for k, v in judge_metrics.ranking_metrics(scores, ranks).items()})
    if pairwise:
        row.update(pairwise_agreement(pair_probs, human))
    row["engine"] = engine
    row["seconds"] = round(time.perf_counter() - start, 1)
    items_file = run.judge_eval_items(
        label, Path(labels).name.removesuffix(".jsonl"), cfg.judge.mode, cfg.judge.samples
    )
    row["items_file"] = str(items_file)
    write_jsonl(
        items_file,
        (
            {
                "prompt": item.prompt,
                "human_ranks": item.human_ranks,
                "scores": [j.score for j in group],
                "samples": [[{"score": s.score, "error": s.error, "text": s.text} for s in j.samples] for j in group],
            }
            for item, group in zip(items, per_item, strict=True)
        ),
    )
    return row


def _ranked_pairs(items: list[LabelledItem]) -> tuple[list[tuple[str, str, str]], list[int]]:
    """Every pair of responses the humans did not tie, as (prompt, x, y) in file order, and +1 where
    the humans prefer x, -1 where they prefer y."""
    triples, human = [], []
    for item in items:
        for j in range(len(item.responses)):
            for k in range(j + 1, len(item.responses)):
                if item.human_ranks[j] == item.human_ranks[k]:
                    continue
                triples.append((item.prompt, item.responses[j], item.responses[k]))
                human.append(1 if item.human_ranks[j] < item.human_ranks[k] else -1)
    return triples, human


def pairwise_agreement(probs: list[tuple[float, float] | None], human: list[int]) -> dict:
    """Direct comparison vs humans. For each pair (x, y): the verdict for x from P(A better) with x as A
    and with x as B (`compare.verdict`); agreement 1 when it matches the humans in both orders, 0 when it
    contradicts them in both, 1/2 when it flips with the order. Pairs too long for the context (None)
    are left out and counted in `direct_too_long`.

    Example: verdicts win, tie, loss with humans preferring x, x, y -> (1 + 0.5 + 1) / 3 = 0.833;
    position_consistency = 2 / 3."""
    judged = [(compare.verdict(*p), h) for p, h in zip(probs, human, strict=True) if p is not None]
    points = [0.5 if v == "tie" else float((v == "win") == (h > 0)) for v, h in judged]
    n = len(points)
    ci = mean_with_ci(points) if n else {"ci_low": None, "ci_high": None}
    return {
        "direct_pairs": n,
        "direct_too_long": len(probs) - n,
        "direct_accuracy": sum(points) / n if n else None,
        "direct_ci_low": ci["ci_low"],
        "direct_ci_high": ci["ci_high"],
        "position_consistency": sum(v != "tie" for v, _ in judged) / n if n else None,
    }


def models_to_evaluate(cfg: RunConfig, model: str | None, run: RunPaths | None) -> list[tuple[str, str]]:
    if model is not None:
        return [(model, resolve_model(model, cfg.cache_dir))]
    assert run is not None
    return compare.run_models(cfg, run)


def judge_eval(
    cfg: RunConfig,
    labels: str,
    models: list[tuple[str, str]],
    run: RunPaths,
    pairwise: bool = False,
    limit: int | None = None,
) -> list[dict]:
    """Evaluate each (label, model) on the labels file (its first `limit` items when given); rows are
    merged into run/judge_eval.json as each model finishes."""
    items = load_labels(labels)[:limit]
    log.info("judge-eval: %d items (%d responses) from %s", len(items), sum(len(i.responses) for i in items), labels)
    rows = []
    for label, path in models:
        log.info("judge-eval: %s (%s)", label, path)
        name = labels if limit is None else f"{labels}[:{limit}]"  # a subset is its own row
        rows.append(evaluate(cfg, label, path, name, items, run, pairwise))
        compare.save_rows(run.judge_eval, rows[-1:], ("model", "labels", "judge_mode", "samples"))
        tag = f"_{Path(name).stem}_{cfg.judge.mode}"
        compare.log_row(Tracker.of(cfg), "judge_eval", rows[-1], label, tag)
    return rows


ITERATION_KEYS = (
    "accuracy",
    "ci_low",
    "ci_high",
    "n_pairs",
    "direct_accuracy",
    "direct_ci_low",
    "direct_ci_high",
    "direct_pairs",
    "position_consistency",
    "parse_failure_rate",
    "mean_score",
)
"""What the iteration's metrics.json keeps of a judge_eval.json row (`judge_accuracy`)."""


def after_iteration(cfg: RunConfig) -> Callable[[RunPaths, int], bool]:
    """`eval.judge_labels`' hook for the loop: after iteration k the new model M_{k+1} (iter_k/model) judges the
    first `eval.judge_limit` items of each label file, rubric scores and both-order comparisons; the rows go to
    the run's judge_eval.json (and the tracker), a summary to iter_k/metrics.json as `judge_accuracy` (keyed by
    label file). After iteration 1 the seed SFT model (iter_0) is measured the same way, the curve's start. A model
    already measured (same weights, same labels) is not measured again. Never stops the run."""

    def hook(run: RunPaths, k: int) -> bool:
        for j in [0, k] if k == 1 and cfg.seed_sft else [k]:
            measure_iteration_judge(cfg, run, j)
        return False

    return hook


def measure_iteration_judge(cfg: RunConfig, run: RunPaths, k: int) -> dict:
    """The judge accuracy of iter_k's model on every `eval.judge_labels` file, into iter_k/metrics.json."""
    it = run.iteration(k)
    model = model_of_iteration(cfg, run, k)
    digest = model_digest(model)
    judged_by = fingerprint(cfg.judge, file_digest(project_file(cfg.judge.template)))
    metrics = read_json(it.metrics) if it.metrics.exists() else {"iteration": k}
    done = metrics.get("judge_accuracy", {})
    limit = cfg.eval.judge_limit or None
    for labels in cfg.eval.judge_labels:
        name = labels if limit is None else f"{labels}[:{limit}]"
        if done.get(name, {}).get("model_digest") == digest and done[name].get("judge") == judged_by:
            continue
        row = judge_eval(cfg, labels, [(f"iter_{k}", model)], run, pairwise=True, limit=limit)[0]
        done[name] = {
            **{key: row.get(key) for key in ITERATION_KEYS},
            "judge_mode": cfg.judge.mode,
            "judge": judged_by,
            "model_digest": digest,
        }
        log.info("judge accuracy of iter_%d's model on %s: %s", k, name, summary_line(done[name]))
    metrics = read_json(it.metrics) if it.metrics.exists() else {"iteration": k}  # as it is now
    metrics["judge_accuracy"] = done
    write_json(it.metrics, metrics)
    return done


def summary_line(m: dict) -> str:
    """`rubric 0.55 [0.45, 0.65] (n 80) · both orders 0.52 [0.44, 0.60] (n 80) · parse failures 0.12`."""
    parts = []
    if m.get("accuracy") is not None:
        parts.append(f"rubric {m['accuracy']:.2f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}] (n {m['n_pairs']})")
    if m.get("direct_accuracy") is not None:
        parts.append(
            f"both orders {m['direct_accuracy']:.2f} [{m['direct_ci_low']:.2f}, {m['direct_ci_high']:.2f}] "
            f"(n {m['direct_pairs']})"
        )
    if m.get("parse_failure_rate") is not None:
        parts.append(f"parse failures {m['parse_failure_rate']:.2f}")
    return " · ".join(parts) or "no pairs"
