"""Look inside a run from the terminal: what each stage kept and dropped, and example pairs.

Reads  iterations/<run>/iter_K/{prompts,prompts_rejected,candidates,judgements,pairs,dpo_log}.jsonl,
       iter_K/metrics.json (only for the pair drop reasons and whether DPO was skipped, which no
       other file records), and the optional iterations/<run>/{judge_eval,compare,methods}.json.
Writes nothing; prints `rich` tables.

    selfreward inspect iterations/default                  # one row per iteration
    selfreward inspect iterations/default --iter 2 --show 5 --sort margin --where 'margin>=2'

Every number is computed from the artifact files (a pair count is the number of lines of
pairs.jsonl), so what is printed matches the files even where metrics.json is stale. A file that
is not there (a stage not run yet) prints as `—`. `summarize()` is shared with `report.py`.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from selfreward.artifacts import DataError, RunPaths, read_json, read_jsonl

MAX_SCORE = 5
PAIR_FIELDS = ("margin", "chosen_score", "rejected_score", "chosen_tokens", "rejected_tokens")
"""The numeric pair fields that `--where` can filter on."""
RESULT_FILES = ("judge_eval.json", "compare.json", "methods.json")
"""Optional results that other commands write into the run folder."""
_WHERE = re.compile(r"^\s*([A-Za-z_]\w*)\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d*)?|-?\.\d+)\s*$")
_OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


class WhereError(ValueError):
    """A `--where` expression that is not `FIELD OP NUMBER` over a numeric pair field."""


# --------------------------------------------------------------------------- reading the files


@dataclass
class IterationFiles:
    """The rows of one iteration folder; None where the file is not there (stage not run yet)."""

    k: int
    metrics: dict[str, Any]
    prompts: list[dict] | None
    rejected: list[dict] | None
    candidates: list[dict] | None
    judgements: list[dict] | None
    pairs: list[dict] | None
    dpo_log: list[dict] | None


def resolve_run(run: str | Path) -> RunPaths:
    """A run folder given as a path (`iterations/default`) or as a name under `iterations/`."""
    for path in (Path(run), Path("iterations") / str(run)):
        if path.is_dir():
            return RunPaths(path)
    raise DataError(f"{run}: no such run folder")


def load_iteration(run: RunPaths, k: int) -> IterationFiles:
    it = run.iteration(k)
    if not it.root.is_dir():
        present = ", ".join(map(str, run.iterations())) or "none"
        raise DataError(f"{it.root}: no such iteration (present: {present})")

    def rows(path: Path) -> list[dict] | None:
        return read_jsonl(path) if path.exists() else None

    return IterationFiles(
        k=k,
        metrics=read_json(it.metrics) if it.metrics.exists() else {},
        prompts=rows(it.prompts),
        rejected=rows(it.prompts_rejected),
        candidates=rows(it.candidates),
        judgements=rows(it.judgements),
        pairs=rows(it.pairs),
        dpo_log=rows(it.dpo_log),
    )


def load_results(run: RunPaths) -> dict[str, Any]:
    """The optional result files present in the run folder, by file name."""
    return {name: read_json(run.root / name) for name in RESULT_FILES if (run.root / name).exists()}


# --------------------------------------------------------------------------- numbers


@dataclass
class Summary:
    """One iteration in numbers, all computed from the files; None where the file is missing."""

    k: int
    prompts_generated: int | None = None
    prompts_kept: int | None = None
    prompts_rejected: int | None = None
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    candidates: int | None = None
    candidates_truncated: int | None = None
    candidates_empty: int | None = None
    mean_candidate_tokens: float | None = None
    judge_samples: int | None = None
    parse_failures: int | None = None
    parse_failure_rate: float | None = None
    parse_errors: dict[str, int] = field(default_factory=dict)
    scored: int | None = None
    """Candidates with a score (at least one judge sample parsed)."""
    unscored: int | None = None
    mean_score: float | None = None
    score_histogram: list[int] | None = None
    """Candidates per rounded mean score 0..5 (as judge.judgement_metrics counts them)."""
    pairs: int | None = None
    prompts_without_pair: int | None = None
    """Kept prompts minus pairs; the reasons come from metrics.json (`drop_reasons`)."""
    drop_reasons: dict[str, int] = field(default_factory=dict)
    margins: list[float] = field(default_factory=list)
    mean_margin: float | None = None
    mean_chosen_tokens: float | None = None
    mean_rejected_tokens: float | None = None
    chosen_longer: int | None = None
    """Pairs whose chosen response has more tokens than the rejected one."""
    dpo_skipped: bool = False
    dpo_steps: int | None = None
    dpo_first_loss: float | None = None
    dpo_last_loss: float | None = None
    dpo_last_margin: float | None = None


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def training_rows(log: list[dict]) -> list[dict]:
    """The training-step rows of a TRL log history (the final summary row has no `loss`)."""
    return [row for row in log if "loss" in row]


def summarize(d: IterationFiles) -> Summary:
    s = Summary(k=d.k)
    if d.prompts is not None:
        s.prompts_kept = len(d.prompts)
        s.prompts_generated = len(d.prompts) + len(d.rejected or [])
    if d.rejected is not None:
        s.prompts_rejected = len(d.rejected)
        s.rejected_by_reason = dict(Counter(r.get("reason", "unknown") for r in d.rejected).most_common())
    if d.candidates is not None:
        s.candidates = len(d.candidates)
        s.candidates_truncated = sum(c.get("finish_reason") == "length" for c in d.candidates)
        s.candidates_empty = sum(not str(c.get("text", "")).strip() for c in d.candidates)
        s.mean_candidate_tokens = mean([c["num_tokens"] for c in d.candidates if "num_tokens" in c])
    if d.judgements is not None:
        samples = [x for j in d.judgements for x in j.get("samples") or []]
        failed = [x for x in samples if x.get("score") is None]
        scores = [j["score"] for j in d.judgements if j.get("score") is not None]
        s.judge_samples, s.parse_failures = len(samples), len(failed)
        s.parse_failure_rate = len(failed) / len(samples) if samples else None
        s.parse_errors = dict(Counter(x.get("error") or "unknown" for x in failed).most_common())
        s.scored, s.unscored = len(scores), len(d.judgements) - len(scores)
        s.mean_score = mean(scores)
        s.score_histogram = [0] * (MAX_SCORE + 1)
        for score in scores:
            s.score_histogram[max(0, min(MAX_SCORE, int(round(score))))] += 1
    if d.pairs is not None:
        s.pairs = len(d.pairs)
        if s.prompts_kept is not None:
            s.prompts_without_pair = s.prompts_kept - s.pairs
        s.drop_reasons = d.metrics.get("stages", {}).get("pairs", {}).get("prompts_without_pair") or {}
        s.margins = [p["margin"] for p in d.pairs]
        s.mean_margin = mean(s.margins)
        s.mean_chosen_tokens = mean([p["chosen_tokens"] for p in d.pairs])
        s.mean_rejected_tokens = mean([p["rejected_tokens"] for p in d.pairs])
        s.chosen_longer = sum(p["chosen_tokens"] > p["rejected_tokens"] for p in d.pairs)
    s.dpo_skipped = bool(d.metrics.get("stages", {}).get("dpo", {}).get("skipped"))
    if d.dpo_log is not None:
        steps = training_rows(d.dpo_log)
        s.dpo_steps = len(steps)
        if steps:
            s.dpo_first_loss, s.dpo_last_loss = steps[0]["loss"], steps[-1]["loss"]
            margins = [row["rewards/margins"] for row in steps if "rewards/margins" in row]
            s.dpo_last_margin = margins[-1] if margins else None
    return s


OVERVIEW_COLUMNS = (
    "iter",
    "prompts kept",
    "candidates",
    "parse failures",
    "mean score",
    "pairs",
    "chosen tok",
    "rejected tok",
    "DPO last loss",
)


def overview_row(s: Summary) -> list[str]:
    """One iteration as the cells of OVERVIEW_COLUMNS."""
    return [
        str(s.k),
        fmt(s.prompts_kept),
        fmt(s.candidates),
        pct(s.parse_failure_rate),
        fmt(s.mean_score),
        fmt(s.pairs),
        fmt(s.mean_chosen_tokens, 1),
        fmt(s.mean_rejected_tokens, 1),
        "skipped" if s.dpo_skipped and not s.dpo_steps else fmt(s.dpo_last_loss, 4),
    ]


def funnel_rows(s: Summary) -> list[tuple[str, str, str]]:
    """(stage, count, detail) from generated prompts down to DPO."""
    candidates = f"truncated {s.candidates_truncated}, empty {s.candidates_empty}" if s.candidates is not None else ""
    failures = f"{pct(s.parse_failure_rate)} of samples; {counts(s.parse_errors)}" if s.judge_samples else ""
    dpo = ""
    if s.dpo_first_loss is not None:
        dpo = (
            f"loss {fmt(s.dpo_first_loss, 4)} → {fmt(s.dpo_last_loss, 4)}, last reward margin {fmt(s.dpo_last_margin)}"
        )
    return [
        ("prompts generated", fmt(s.prompts_generated), "kept + rejected"),
        ("prompts kept", fmt(s.prompts_kept), ""),
        ("prompts rejected", fmt(s.prompts_rejected), counts(s.rejected_by_reason)),
        ("candidates", fmt(s.candidates), candidates),
        ("judge samples", fmt(s.judge_samples), ""),
        ("parse failures", fmt(s.parse_failures), failures),
        ("candidates scored", fmt(s.scored), "" if s.unscored is None else f"unscored {s.unscored}"),
        ("pairs", fmt(s.pairs), ""),
        ("prompts without pair", fmt(s.prompts_without_pair), counts(s.drop_reasons)),
        ("DPO steps", "skipped" if s.dpo_skipped and not s.dpo_steps else fmt(s.dpo_steps), dpo),
    ]


def margin_buckets(margins: list[float]) -> list[tuple[str, int]]:
    """Counts of margins in [0,1), [1,2), ... [4,5] (5 counts in the last bucket)."""
    n = [0] * MAX_SCORE
    for m in margins:
        n[max(0, min(MAX_SCORE - 1, int(m)))] += 1
    return [(f"{i}–{i + 1}", c) for i, c in enumerate(n)]


def result_table(obj: Any) -> tuple[list[str], list[list[str]]]:
    """A result file as (columns, rows): its `rows` list of dicts (or a top-level list of dicts), transposed
    when they have more than 8 fields, else its top-level key/value pairs. Nothing is assumed about the keys."""
    rows = obj.get("rows") if isinstance(obj, dict) else obj
    if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
        columns = list(dict.fromkeys(key for r in rows for key in r))
        if len(columns) > 8:  # wide rows (judge_eval has ~25 fields): a column per row, a line per field
            return ["field", *(cell(r.get(columns[0])) for r in rows)], [
                [c, *(cell(r.get(c)) for r in rows)] for c in columns
            ]
        return columns, [[cell(r.get(c)) for c in columns] for r in rows]
    if isinstance(obj, dict):
        return ["key", "value"], [[str(k), cell(v)] for k, v in obj.items()]
    return ["value"], [[cell(obj)]]


# --------------------------------------------------------------------------- pair selection


def parse_where(expr: str) -> tuple[str, str, float]:
    """`margin>=2` -> ("margin", ">=", 2.0); anything else raises WhereError naming the expression."""
    m = _WHERE.match(expr)
    if not m or m.group(1) not in PAIR_FIELDS:
        raise WhereError(
            f"bad --where expression {expr!r}: expected FIELD OP NUMBER, FIELD one of {', '.join(PAIR_FIELDS)}, "
            f"OP one of {' '.join(_OPS)}"
        )
    return m.group(1), m.group(2), float(m.group(3))


def select_pairs(pairs: list[dict], where: Sequence[str] = (), sort: str | None = None) -> list[dict]:
    """Pairs that satisfy every `where` expression; `sort`: margin (largest first) or length
    (longest first, chosen + rejected tokens); None keeps the file order."""
    tests = [parse_where(w) for w in where]
    out = [p for p in pairs if all(p.get(f) is not None and _OPS[op](p[f], value) for f, op, value in tests)]
    if sort == "margin":
        out.sort(key=lambda p: -p["margin"])
    elif sort == "length":
        out.sort(key=lambda p: -(p["chosen_tokens"] + p["rejected_tokens"]))
    elif sort is not None:
        raise WhereError(f"bad --sort {sort!r}: expected margin or length")
    return out


# --------------------------------------------------------------------------- formatting


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return "—" if value is None else str(value)


def clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def first_judge_sample(judgement: dict | None) -> str:
    samples = (judgement or {}).get("samples") or []
    if not samples:
        return "(no judgement)"
    sample = samples[0]
    head = f"[score {fmt(sample.get('score'))}]" if sample.get("score") is not None else f"[{sample.get('error')}]"
    return f"{head} {sample.get('text', '')}"


def bar(n: int, total: int, width: int = 30) -> str:
    return "█" * round(width * n / total) if total else ""


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
