"""Model quality on checkable instructions (`selfreward evaluate RUN`): did M_t get better?

Reads  the run's models (M0 = the configured model, M1 = iter_0's seed SFT model when there is one, then each
       iteration's model, or `--models`), the constraint prompts (`eval.prompts`, IFEval's format: ours by
       default, or a user's IFEval `input_data.jsonl` with `--prompts`)
Writes iterations/<run>/evaluate/answers/<label>.jsonl  each model's greedy answers with the checkers' verdicts
                                                        (made once, reused while model, prompts and settings
                                                        are unchanged)
       iterations/<run>/evaluate.json                   one row per model and prompt file (replaced on re-run)

Per model, IFEval's four numbers, each with a 95% percentile-bootstrap interval over prompts (`stats`):
prompt-level strict / loose (a prompt counts when every one of its instructions is followed) and
instruction-level strict / loose (instructions pooled; the interval resamples prompts). Then the paired gain
of the prompt-level accuracies over M0 and over M1 (the same prompts, a paired bootstrap: the interval is of
the difference; also over the model before it, `gain_vs_previous`), the mean answer length in tokens and
how many answers were cut at `eval.max_tokens` (`cut_off`), and the strict accuracy per instruction type.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfreward.artifacts import RunPaths, model_digest, read_json, read_jsonl, slug, write_json, write_jsonl
from selfreward.config import RunConfig, fingerprint
from selfreward.constraints.checkers import check_prompt
from selfreward.constraints.data import load_constraint_prompts
from selfreward.evaluation.compare import log_row, run_models
from selfreward.generation import SamplingSpec, open_generator
from selfreward.records import Prompt
from selfreward.stats import bootstrap_ratio, mean, mean_with_ci, paired_gain_with_ci
from selfreward.tracking import Tracker

log = logging.getLogger(__name__)

MEASURES = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


def labelled_models(cfg: RunConfig, run: RunPaths) -> list[tuple[str, str]]:
    """(label, folder) of every finished model of the run as M0, M1, M2, ...: M0 the configured model, then
    iter_0's (the seed SFT, M1) when present and each iteration's in order."""
    return [(f"M{t}", path) for t, (_, path) in enumerate(run_models(cfg, run))]


def answer_rows(cfg: RunConfig, label: str, model: str, prompts: list[Prompt], out_dir: Path) -> list[dict]:
    """The model's greedy answers to `prompts` with the checkers' verdicts (cached in out_dir/answers/)."""
    path = out_dir / "answers" / f"{slug(label)}.jsonl"
    meta = out_dir / "answers" / f"{slug(label)}.json"
    texts = [(p.prompt_id, p.text, p.instruction_id_list, p.kwargs) for p in prompts]
    # the model by content (a copied or moved model folder is the same model), prompts and settings
    key = fingerprint(model_digest(model), texts, cfg.eval.max_tokens, cfg.engine.backend, cfg.seed)
    if path.exists() and meta.exists() and read_json(meta).get("fingerprint") == key:
        return read_jsonl(path, ["prompt_id", "strict", "loose"])
    with open_generator(cfg.engine, model, Path(cfg.cache_dir), seed=cfg.seed) as gen:
        spec = SamplingSpec(n=1, temperature=0.0, max_tokens=cfg.eval.max_tokens, seed=cfg.seed)
        outs = gen.chat([[{"role": "user", "content": p.text}] for p in prompts], spec)
    rows = []
    for p, (out,) in zip(prompts, outs, strict=True):
        strict, loose = check_prompt(p.instruction_id_list, p.kwargs, out.text)
        rows.append(
            {
                "prompt_id": p.prompt_id,
                "instruction_id_list": p.instruction_id_list,
                "text": out.text,
                "num_tokens": out.num_tokens,
                "finish_reason": out.finish_reason,
                "strict": strict,
                "loose": loose,
            }
        )
    write_jsonl(path, rows)
    write_json(meta, {"model": model, "fingerprint": key})
    return rows


def per_prompt(rows: list[dict]) -> dict[str, dict[str, float]]:
    """prompt id -> {prompt_strict, prompt_loose}: 1.0 when every instruction is followed, else 0.0."""
    return {
        r["prompt_id"]: {"prompt_strict": float(all(r["strict"])), "prompt_loose": float(all(r["loose"]))}
        for r in rows
    }


def summarize(rows: list[dict], seed: int = 0) -> dict[str, Any]:
    """IFEval's four accuracies with intervals, lengths and cut-offs, per-type strict accuracy (docstring)."""
    out: dict[str, Any] = {"prompts": len(rows)}
    prompts = per_prompt(rows)
    for level in ("strict", "loose"):
        out[f"prompt_{level}"] = mean_with_ci([v[f"prompt_{level}"] for v in prompts.values()], seed=seed)
        followed = [float(sum(r[level])) for r in rows]
        counts = [float(len(r[level])) for r in rows]
        low, high = bootstrap_ratio(followed, counts, seed=seed)
        out[f"instruction_{level}"] = {
            "value": sum(followed) / sum(counts) if rows else float("nan"),
            "ci_low": low,
            "ci_high": high,
            "n": int(sum(counts)),
        }
    by_type: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for instruction, ok in zip(r["instruction_id_list"], r["strict"], strict=True):
            by_type[instruction].append(float(ok))
    out["by_instruction"] = {k: {"strict": mean(v), "n": len(v)} for k, v in sorted(by_type.items())}
    out["mean_tokens"] = mean([float(r["num_tokens"]) for r in rows])
    out["cut_off"] = sum(r["finish_reason"] == "length" for r in rows)
    return out


def gain(after: list[dict], before: list[dict], seed: int = 0) -> dict[str, dict]:
    """The paired gain of `after` over `before` in prompt-level strict and loose accuracy, over their prompts."""
    a, b = per_prompt(after), per_prompt(before)
    return {
        m: paired_gain_with_ci({p: v[m] for p, v in a.items()}, {p: v[m] for p, v in b.items()}, seed=seed)
        for m in ("prompt_strict", "prompt_loose")
    }


def evaluate(
    cfg: RunConfig,
    run: RunPaths,
    models: list[tuple[str, str]] | None = None,
    prompts_file: str | None = None,
    limit: int | None = None,
) -> list[dict]:
    """Every model of the run (or `models`, (label, folder) pairs) on the constraint prompts: one row each,
    merged into the run's evaluate.json and logged to the tracker."""
    source = prompts_file or cfg.eval.prompts
    prompts = load_constraint_prompts(source)
    limit = cfg.eval.limit if limit is None else limit
    prompts = prompts[:limit] if limit else prompts
    models = models or labelled_models(cfg, run)
    answers: dict[str, list[dict]] = {}
    rows = []
    for label, path in models:
        start = time.perf_counter()
        log.info("evaluate: %s (%s) on %d prompts of %s", label, path, len(prompts), source)
        answers[label] = answer_rows(cfg, label, path, prompts, run.evaluate_dir)
        row = {"model": label, "path": path, "prompt_file": str(source), **summarize(answers[label], cfg.seed)}
        for base in ("M0", "M1"):
            if base in answers and base != label:
                row[f"gain_vs_{base}"] = gain(answers[label], answers[base], cfg.seed)
        if len(answers) > 1:
            row["gain_vs_previous"] = gain(answers[label], answers[models[len(answers) - 2][0]], cfg.seed)
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
    merge_rows(run.evaluate, rows)
    tracker = Tracker.of(cfg)
    for row in rows:
        label = row["model"]
        log_row(tracker, "evaluate", _scalars(row), f"iter_{int(label[1:]) - 1}" if label[1:].isdigit() else label)
    return rows


def _scalars(row: dict) -> dict:
    out = {m: row[m]["value"] for m in MEASURES}
    for base in ("M0", "M1"):
        if f"gain_vs_{base}" in row:
            out[f"gain_vs_{base}"] = row[f"gain_vs_{base}"]["prompt_strict"]["value"]
    return {**out, "mean_tokens": row["mean_tokens"], "cut_off": row["cut_off"]}


def merge_rows(path: Path, rows: list[dict]) -> list[dict]:
    """Merge rows into evaluate.json, replacing rows of the same model and prompt file."""
    old = read_json(path).get("rows", []) if path.exists() else []
    keys = {(r["model"], r["prompt_file"]) for r in rows}
    merged = [r for r in old if (r.get("model"), r.get("prompt_file")) not in keys] + rows
    merged.sort(key=lambda r: (r["prompt_file"], int(r["model"][1:]) if r["model"][1:].isdigit() else 10**6))
    write_json(path, {"rows": merged})
    return merged


def after_iteration(cfg: RunConfig) -> Callable[[RunPaths, int], bool]:
    """`eval.every_iteration`'s hook for the loop: evaluate every model of the run so far (cached answers are
    reused), and with `eval.stop_if_worse` return True (stop) when the newest model's prompt-level strict
    accuracy is below the one before it with the paired interval below zero."""

    def hook(run: RunPaths, k: int) -> bool:
        rows = evaluate(cfg, run)
        g = rows[-1].get("gain_vs_previous", {}).get("prompt_strict")
        if not cfg.eval.stop_if_worse or g is None or g["ci_high"] >= 0:
            return False
        log.warning(
            "eval.stop_if_worse: %s is worse than the model before it on prompt-level strict accuracy "
            "(%+.3f [%.3f, %.3f]): stopping after iteration %d",
            rows[-1]["model"],
            g["value"],
            g["ci_low"],
            g["ci_high"],
            k,
        )
        return True

    return hook
