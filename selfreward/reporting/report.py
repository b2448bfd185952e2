"""One self-contained HTML page about a run: funnel, scores, length drift, DPO curves, pairs.

Reads  the same files as `selfreward inspect` (iter_K/*.jsonl, metrics.json, dpo_log.jsonl, the
       optional judge_eval.json, compare.json, methods.json and reason/reason.json) plus iterations/<run>/manifest.json
Writes iterations/<run>/report.html (atomically): plots are PNGs drawn with matplotlib's Agg
       canvas and embedded as base64 data URIs; no scripts, no network. All text from the run
       is HTML-escaped.

    selfreward report iterations/default        # or: make report RUN=iterations/default
"""

from __future__ import annotations

import base64
import html
import io
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from selfreward.artifacts import RunPaths, read_json, write_text
from selfreward.reporting.summary import (
    MAX_SCORE,
    OVERVIEW_COLUMNS,
    IterationFiles,
    Summary,
    fmt,
    funnel_rows,
    load_iteration,
    load_results,
    overview_row,
    resolve_run,
    result_table,
    summarize,
    training_rows,
)

MAX_PAIRS = 200
"""Pairs listed per iteration; the rest are counted (use `selfreward inspect --where` for them)."""

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; vertical-align: top; }
th:first-child, td:first-child, table.funnel :last-child { text-align: left; }
td:first-child, th { white-space: nowrap; } table.funnel td:last-child { white-space: pre-line; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; display: block; margin: .5em 0; }
.meta, .note { color: #666; }
details { border: 1px solid #ddd; border-radius: 4px; margin: .3em 0; padding: .3em .6em; }
summary { cursor: pointer; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
pre { white-space: pre-wrap; word-break: break-word; background: #f7f7f7; padding: .5em;
      max-height: 24em; overflow: auto; margin: .3em 0; font-size: 13px; }
"""


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


# --------------------------------------------------------------------------- plots


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def img(fig: Figure, alt: str) -> str:
    """The figure as an <img> with a base64 PNG data URI and its pixel width and height."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    data = buf.getvalue()
    width, height = png_size(data)
    uri = base64.b64encode(data).decode("ascii")
    return f'<img alt="{e(alt)}" width="{width}" height="{height}" src="data:image/png;base64,{uri}">'


def figure(width: float = 9, height: float = 3.4, ncols: int = 1) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, list(axes)


def score_plot(summaries: list[Summary]) -> str | None:
    """Grouped bars: candidates per rounded judge score, one colour per iteration; unscored on the right."""
    judged = [s for s in summaries if s.score_histogram is not None]
    if not judged:
        return None
    fig, (ax,) = figure()
    width = 0.8 / len(judged)
    for i, s in enumerate(judged):
        xs = [x - 0.4 + width * (i + 0.5) for x in range(MAX_SCORE + 2)]
        ax.bar(xs, [*s.score_histogram, s.unscored or 0], width, label=f"iter {s.k}")
    ax.set_xticks(range(MAX_SCORE + 2), [*map(str, range(MAX_SCORE + 1)), "unscored"])
    ax.set_xlabel("judge score (mean of samples, rounded)")
    ax.set_ylabel("candidates")
    ax.legend()
    return img(fig, "judge score histogram per iteration")


def judge_curves(summaries: list[Summary], seed_metrics: dict) -> dict[str, list[tuple[int, float, float, float]]]:
    """Per judge measure, (t, value, ci_low, ci_high) for the judge M_t: its agreement with the checkers on the
    candidates of iteration t (which M_t judged), and its accuracy on each human-label file (`eval.judge_labels`:
    iter_k's metrics hold M_{k+1}'s, iter_0's hold M1's)."""
    curves: dict[str, list[tuple[int, float, float, float]]] = {}
    for s in summaries:
        if s.judge_checker_agreement is not None and s.judge_checker_ci:
            curves.setdefault("vs checkers", []).append((s.k, s.judge_checker_agreement, *s.judge_checker_ci))
    by_iteration = [(0, seed_metrics.get("judge_accuracy") or {})] + [(s.k, s.judge_accuracy) for s in summaries]
    for k, accuracy in by_iteration:
        for name, m in accuracy.items():
            for key, low, high, what in (
                ("accuracy", "ci_low", "ci_high", "rubric"),
                ("direct_accuracy", "direct_ci_low", "direct_ci_high", "both orders"),
            ):
                if m.get(key) is not None and m.get(low) is not None:
                    label = f"vs humans, {what} ({Path(name.split('[')[0]).stem})"
                    curves.setdefault(label, []).append((k + 1, m[key], m[low], m[high]))
    return curves


def improvement_plot(summaries: list[Summary], evaluate: dict | None, seed_metrics: dict | None = None) -> str | None:
    """Did it improve? Left: each model's prompt-level accuracy on checkable instructions (evaluate.json), strict
    and loose, with 95% intervals. Right: each model as a judge: its agreement with the checkers and its accuracy
    on human labels (`judge_curves`), with intervals (0.5 = chance)."""
    rows = [r for r in (evaluate or {}).get("rows", []) if isinstance(r.get("prompt_strict"), dict)]
    curves = judge_curves(summaries, seed_metrics or {})
    if not rows and not curves:
        return None
    fig, (left, right) = figure(height=3.4, ncols=2)
    for file in dict.fromkeys(r["prompt_file"] for r in rows):
        for level, marker in (("prompt_strict", "o"), ("prompt_loose", "s")):
            points = [r for r in rows if r["prompt_file"] == file]
            xs = list(range(len(points)))
            ys = [r[level]["value"] for r in points]
            err = [
                [y - r[level]["ci_low"] for y, r in zip(ys, points, strict=True)],
                [r[level]["ci_high"] - y for y, r in zip(ys, points, strict=True)],
            ]
            left.errorbar(xs, ys, yerr=err, marker=marker, capsize=3, label=f"{level} ({Path(file).name})")
            left.set_xticks(xs, [r["model"] for r in points])
    left.set_title("model: accuracy on checkable instructions")
    left.set_ylabel("prompt-level accuracy")
    if rows:
        left.legend(fontsize=7)
    ticks: set[int] = set()
    for label, points in curves.items():
        xs = [t for t, *_ in points]
        ys = [v for _, v, _, _ in points]
        err = [[v - lo for _, v, lo, _ in points], [hi - v for _, v, _, hi in points]]
        right.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
        ticks.update(xs)
    if curves:
        right.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        right.set_xticks(sorted(ticks), [f"M{t}" for t in sorted(ticks)])
        right.legend(fontsize=7)
    right.set_title("judge: agreement with checkers and humans")
    right.set_xlabel("judge model")
    right.set_ylim(0, 1)
    return img(fig, "did it improve: model accuracy on checkable instructions and judge accuracy per model")


def length_plot(summaries: list[Summary]) -> str | None:
    """Mean tokens of all candidates, chosen and rejected responses, across iterations."""
    series = {
        "all candidates": [(s.k, s.mean_candidate_tokens) for s in summaries],
        "chosen": [(s.k, s.mean_chosen_tokens) for s in summaries],
        "rejected": [(s.k, s.mean_rejected_tokens) for s in summaries],
    }
    series = {name: [(k, v) for k, v in points if v is not None] for name, points in series.items()}
    if not any(series.values()):
        return None
    fig, (ax,) = figure(height=3.2)
    for name, points in series.items():
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.set_xticks([s.k for s in summaries])
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean tokens")
    ax.legend()
    return img(fig, "mean response length per iteration")


def dpo_plot(iterations: list[IterationFiles]) -> str | None:
    """DPO loss and reward margin against the trainer step, one line per iteration."""
    logs = [(d.k, training_rows(d.dpo_log or [])) for d in iterations]
    logs = [(k, steps) for k, steps in logs if steps]
    if not logs:
        return None
    fig, axes = figure(width=11, height=3.4, ncols=2)
    for ax, key, label in zip(axes, ("loss", "rewards/margins"), ("DPO loss", "reward margin"), strict=True):
        for k, steps in logs:
            points = [(row.get("step", i + 1), row[key]) for i, row in enumerate(steps) if key in row]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=f"iter {k}")
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.legend()
    return img(fig, "DPO loss and reward margin per step")


# --------------------------------------------------------------------------- html pieces


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def funnel_table(summaries: list[Summary]) -> str:
    """Stages down, iterations across; the detail (reasons) of each stage in the last column."""
    funnels = [funnel_rows(s) for s in summaries]
    columns = ["stage", *(f"iter {s.k}" for s in summaries), "detail (per iteration)"]
    rows = []
    for i, (stage, _, _) in enumerate(funnels[0]):
        details = {s.k: f[i][2] for s, f in zip(summaries, funnels, strict=True) if f[i][2]}
        if len(set(details.values())) == 1 and len(details) == len(summaries):
            detail = next(iter(details.values()))
        else:
            detail = "\n".join(f"iter {k}: {v}" for k, v in details.items())
        rows.append([stage, *(f[i][1] for f in funnels), detail])
    return table(columns, rows, cls="funnel")


def judge_block(judgement: dict | None) -> str:
    samples = (judgement or {}).get("samples") or []
    if not samples:
        return '<p class="note">no judgement</p>'
    out = []
    for i, s in enumerate(samples, 1):
        head = f"score {fmt(s.get('score'))}" if s.get("score") is not None else f"parse error: {s.get('error')}"
        out.append(f"<div>judge sample {i}: {e(head)}<pre>{e(s.get('text', ''))}</pre></div>")
    return "".join(out)


def pair_details(p: dict, judgements: dict[str, dict]) -> str:
    summary = (
        f"{p['prompt_id']} · margin {fmt(p['margin'])} · chosen {fmt(p['chosen_score'])} "
        f"({p['chosen_tokens']} tok) vs rejected {fmt(p['rejected_score'])} ({p['rejected_tokens']} tok) · "
        + " ".join(p["prompt"][0]["content"].split())[:100]
    )
    sides = []
    for side in ("chosen", "rejected"):
        cid = p[f"{side}_id"]
        sides.append(
            f"<div><b>{side}</b> {e(cid)} (score {e(fmt(p[f'{side}_score']))}, {e(p[f'{side}_tokens'])} tokens)"
            f"<pre>{e(p[side][0]['content'])}</pre>{judge_block(judgements.get(cid))}</div>"
        )
    return (
        f"<details><summary>{e(summary)}</summary><p><b>prompt</b></p><pre>{e(p['prompt'][0]['content'])}</pre>"
        f'<div class="pair">{"".join(sides)}</div></details>'
    )


def pairs_section(d: IterationFiles) -> str:
    if d.pairs is None:
        return f'<h3>iteration {d.k}</h3><p class="note">pairs.jsonl not written yet</p>'
    judgements = {j["candidate_id"]: j for j in d.judgements or []}
    shown = d.pairs[:MAX_PAIRS]
    more = f", first {len(shown)} shown" if len(shown) < len(d.pairs) else ""
    return f"<h3>iteration {d.k}: {len(d.pairs)} pairs{more}</h3>" + "".join(
        pair_details(p, judgements) for p in shown
    )


# --------------------------------------------------------------------------- the page


def build_report(run: RunPaths) -> str:
    iterations = [load_iteration(run, k) for k in run.iterations()]
    summaries = [summarize(d) for d in iterations]
    manifest = read_json(run.manifest) if run.manifest.exists() else {}
    command = " ".join(manifest.get("command") or [])
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>selfreward report: {e(run.root.name)}"
        f"</title><style>{CSS}</style></head><body><h1>selfreward report: <code>{e(run.root)}</code></h1>",
        f'<p class="meta">written {e(time.strftime("%Y-%m-%d %H:%M:%S"))}; run started {e(manifest.get("time", "—"))};'
        f" git {e(manifest.get('git_sha') or '—')}; command <code>{e(command)}</code></p>",
    ]
    results = load_results(run)
    seed = run.iteration(0).metrics
    improvement = improvement_plot(summaries, results.get("evaluate.json"), read_json(seed) if seed.exists() else {})
    parts.append(
        '<h2 id="improved">Did it improve?</h2>'
        + (improvement or '<p class="note">no evaluation yet: <code>selfreward evaluate RUN</code></p>')
    )
    if not iterations:
        parts.append('<p class="note">no iterations yet</p>')
    else:
        parts += [
            "<h2>Overview</h2>",
            table(OVERVIEW_COLUMNS, [overview_row(s) for s in summaries]),
            "<h2>Funnel</h2>",
            funnel_table(summaries),
        ]
        for title, plot in (
            ("Judge scores", score_plot(summaries)),
            ("Length drift", length_plot(summaries)),
            ("DPO training", dpo_plot(iterations)),
        ):
            parts.append(f"<h2>{title}</h2>" + (plot or '<p class="note">no data yet</p>'))
    for name, obj in results.items():
        parts += [f"<h2>{e(name)}</h2>", table(*result_table(obj))]
    if iterations:
        parts.append("<h2>Pairs</h2>" + "".join(pairs_section(d) for d in iterations))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(run: str | Path) -> Path:
    """Write iterations/<run>/report.html and return its path."""
    paths = resolve_run(run)
    out = paths.root / "report.html"
    write_text(out, build_report(paths))
    return out
