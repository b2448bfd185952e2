"""Look inside a run from the terminal: what each stage kept and dropped, and example pairs.

Reads  iterations/<run>/iter_K/{prompts,prompts_rejected,candidates,judgements,pairs,dpo_log}.jsonl,
       iter_K/metrics.json (only for the pair drop reasons and whether DPO was skipped, which no
       other file records), and the optional iterations/<run>/{judge_eval,compare,methods}.json.
Writes nothing; prints `rich` tables.

    selfreward inspect iterations/default                  # one row per iteration
    selfreward inspect iterations/default --iter 2 --show 5 --sort margin --where 'margin>=2'

The numbers come from `summary` (computed from the files, as the HTML report's are).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from selfreward.artifacts import RunPaths
from selfreward.reporting.summary import (
    OVERVIEW_COLUMNS,
    IterationFiles,
    bar,
    clip,
    first_judge_sample,
    fmt,
    funnel_rows,
    load_iteration,
    load_results,
    margin_buckets,
    mean,
    overview_row,
    parse_where,
    pct,
    resolve_run,
    result_table,
    select_pairs,
    summarize,
)

# --------------------------------------------------------------------------- printing


def inspect_run(
    run: str | Path,
    k: int | None = None,
    show: int = 3,
    sort: str | None = None,
    where: Sequence[str] = (),
    console: Console | None = None,
    text_chars: int = 300,
) -> None:
    """Print the run overview, or with `k` one iteration in detail and `show` example pairs."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped into a file or `less`: wider than rich's default of 80 columns
            console = Console(width=max(console.width, 120))
    paths = resolve_run(run)
    for expr in where:
        parse_where(expr)  # a bad expression fails before anything is printed
    if k is None:
        print_overview(paths, console)
    else:
        print_iteration(paths, load_iteration(paths, k), console, show, sort, where, text_chars)


def print_overview(run: RunPaths, console: Console) -> None:
    table = Table(title=f"{run.root}: one row per iteration", title_justify="left")
    for i, name in enumerate(OVERVIEW_COLUMNS):
        table.add_column(name, justify="left" if i == 0 else "right")
    for k in run.iterations():
        table.add_row(*overview_row(summarize(load_iteration(run, k))))
    if not run.iterations():
        console.print(f"{run.root}: no iterations yet")
    else:
        console.print(table)
    for name, obj in load_results(run).items():
        columns, rows = result_table(obj)
        t = Table(title=name, title_justify="left")
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*map(Text, r))
        console.print(t)


def print_iteration(
    run: RunPaths,
    d: IterationFiles,
    console: Console,
    show: int,
    sort: str | None,
    where: Sequence[str],
    text_chars: int,
) -> None:
    s = summarize(d)
    funnel = Table(title=f"{run.iteration(d.k).root}: stage funnel", title_justify="left")
    funnel.add_column("stage")
    funnel.add_column("count", justify="right")
    funnel.add_column("detail")
    for row in funnel_rows(s):
        funnel.add_row(*row)
    console.print(funnel)

    if s.score_histogram is not None:
        console.print(f"judge scores: mean {fmt(s.mean_score)}, parse failures {pct(s.parse_failure_rate)}")
        hist = Table()
        hist.add_column("score", justify="right")
        hist.add_column("candidates", justify="right")
        hist.add_column("")
        total = max(1, len(d.judgements or []))
        for score, n in [*enumerate(s.score_histogram), ("unscored", s.unscored or 0)]:
            hist.add_row(str(score), str(n), bar(n, total))
        console.print(hist)

    if s.pairs:
        console.print(
            f"margin (chosen − rejected score): min {fmt(min(s.margins))}, median "
            f"{fmt(statistics.median(s.margins))}, mean {fmt(s.mean_margin)}, max {fmt(max(s.margins))}"
        )
        margins = Table()
        margins.add_column("margin", justify="right")
        margins.add_column("pairs", justify="right")
        margins.add_column("")
        for label, n in margin_buckets(s.margins):
            margins.add_row(label, str(n), bar(n, s.pairs))
        console.print(margins)

    if s.pairs or s.candidates:
        console.print("lengths (tokens)")
        lengths = Table()
        for c in ("", "n", "mean", "median", "min", "max"):
            lengths.add_column(c, justify="left" if not c else "right")
        groups = {
            "chosen": [p["chosen_tokens"] for p in d.pairs or []],
            "rejected": [p["rejected_tokens"] for p in d.pairs or []],
            "all candidates": [c["num_tokens"] for c in d.candidates or [] if "num_tokens" in c],
        }
        for name, values in groups.items():
            if values:
                lengths.add_row(
                    name,
                    str(len(values)),
                    fmt(mean(values), 1),
                    fmt(float(statistics.median(values)), 1),
                    str(min(values)),
                    str(max(values)),
                )
        console.print(lengths)
        if s.pairs:
            console.print(
                f"chosen longer than rejected: {s.chosen_longer} of {s.pairs} pairs ({pct(s.chosen_longer / s.pairs)})"
            )

    if d.pairs is None:
        console.print("pairs.jsonl: not written yet")
        return
    selected = select_pairs(d.pairs, where, sort)
    judgements = {j["candidate_id"]: j for j in d.judgements or []}
    what = f" matching {' and '.join(where)}" if where else ""
    console.print(
        f"\nexample pairs: {min(show, len(selected))} of {len(selected)}{what} ({len(d.pairs)} in pairs.jsonl)"
    )
    for p in selected[:show]:
        t = Table(
            title=Text(f"{p['prompt_id']}  margin {fmt(p['margin'])}: {clip(p['prompt'][0]['content'], text_chars)}"),
            title_justify="left",
            show_lines=True,
            expand=True,
        )
        t.add_column("", width=8)
        t.add_column(f"chosen {p['chosen_id']} (score {fmt(p['chosen_score'])}, {p['chosen_tokens']} tok)", ratio=1)
        t.add_column(
            f"rejected {p['rejected_id']} (score {fmt(p['rejected_score'])}, {p['rejected_tokens']} tok)", ratio=1
        )
        t.add_row(
            "response",
            Text(clip(p["chosen"][0]["content"], text_chars)),
            Text(clip(p["rejected"][0]["content"], text_chars)),
        )
        t.add_row(
            "judge",
            Text(clip(first_judge_sample(judgements.get(p["chosen_id"])), text_chars)),
            Text(clip(first_judge_sample(judgements.get(p["rejected_id"])), text_chars)),
        )
        console.print(t)
