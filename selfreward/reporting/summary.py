"""A run's files turned into numbers, for the terminal (`inspection`) and the HTML page (`report`).

Reads  iterations/<run>/iter_K/{prompts,prompts_rejected,candidates,judgements,pairs,dpo_log}.jsonl,
       iter_K/metrics.json (only for the pair drop reasons, whether DPO was skipped, and the judge's
       agreement with the checkers with its bootstrap interval, which no other file records), and the
       optional iterations/<run>/{evaluate,judge_eval,compare,methods}.json and reason/reason.json
       (`selfreward reason`: one row per method and round, metrics with intervals).
Writes nothing.

Every number is computed from the artifact files (a pair count is the number of lines of
pairs.jsonl), so what is shown matches the files even where metrics.json is stale. A file that
is not there (a stage not run yet) shows as `—`.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfreward.artifacts import DataError, RunPaths, read_json, read_jsonl
from selfreward.errors import UserError
from selfreward.stats import mean

MAX_SCORE = 5
PAIR_FIELDS = ("margin", "chosen_score", "rejected_score", "chosen_tokens", "rejected_tokens")
"""The numeric pair fields that `--where` can filter on."""
RESULT_FILES = (
    "evaluate.json",
    "judge_eval.json",
    "judge_robustness.json",
    "compare.json",
    "methods.json",
    "reason/reason.json",
)
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


class WhereError(UserError):
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
    mean_digit_mass: float | None = None
    """Probability modes: mean probability the judge put on the digits 0-5 after `Score: `."""
    digit_mass_histogram: list[int] | None = None
    """Judge samples per digit mass [0, 0.1), ..., [0.9, 1.0]."""
    score_length_correlation: float | None = None
    """Pearson r of candidate score vs token count (length bias of the judge)."""
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
    dpo_last_accuracy: float | None = None
    dpo_kl_per_token: float | None = None
    """KL(M_{t+1} || M_t) per answer token on the pairs, measured after training (metrics.json)."""
    dpo_chosen_logp_change: float | None = None
    dpo_rejected_logp_change: float | None = None
    checked_prompts: int | None = None
    """Prompts with checkable instructions."""
    candidate_prompt_strict: float | None = None
    """Share of their candidates that follow every instruction (strict)."""
    judge_checker_agreement: float | None = None
    """How often the judge scored higher the candidate that follows more instructions (metrics.json)."""
    judge_checker_ci: list[float] | None = None
    judge_checker_pairs: int | None = None
    pairs_by_source: dict[str, int] = field(default_factory=dict)
    evaluator_directed: dict = field(default_factory=dict)
    """Candidates with text addressed to the evaluator (metrics.json: count, share, interval, per style)."""
    directed_chosen: int | None = None
    directed_rejected: int | None = None
    judge_accuracy: dict[str, dict] = field(default_factory=dict)
    """`eval.judge_labels`: the accuracy of this iteration's new model as a judge, per label file (metrics.json)."""
    meta_outcomes: dict[str, int] = field(default_factory=dict)
    """`meta_judge.enabled`: candidates by the meta-judge's outcome (preferred, inconsistent, same_score, ...)."""
    judge_pairs: int | None = None
    judge_pairs_dropped: dict[str, int] = field(default_factory=dict)
    persuasion: dict[str, dict] = field(default_factory=dict)
    """`eval.persuasion_items`: the new model's score shift per style of evaluator-directed sentence (metrics.json)."""


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
        masses = [x["digit_mass"] for x in samples if x.get("digit_mass") is not None]
        if masses:
            s.mean_digit_mass = mean(masses)
            s.digit_mass_histogram = [0] * 10
            for m in masses:
                s.digit_mass_histogram[min(9, int(m * 10))] += 1
        if d.candidates is not None:
            by_id = {j["candidate_id"]: j.get("score") for j in d.judgements}
            xy = [(c["num_tokens"], by_id.get(c["candidate_id"])) for c in d.candidates if "num_tokens" in c]
            xy = [(float(x), float(y)) for x, y in xy if y is not None]
            if len(xy) >= 3 and len({x for x, _ in xy}) > 1 and len({y for _, y in xy}) > 1:
                s.score_length_correlation = statistics.correlation([x for x, _ in xy], [y for _, y in xy])
    if d.prompts is not None:
        checked = {p["prompt_id"] for p in d.prompts if p.get("instruction_id_list")}
        s.checked_prompts = len(checked)
        if checked and d.judgements is not None:
            verdicts = [all(j["checks"]["strict"]) for j in d.judgements if j.get("checks")]
            s.candidate_prompt_strict = mean([float(v) for v in verdicts])
    agreement = d.metrics.get("stages", {}).get("judgements", {}).get("constraints") or {}
    s.judge_checker_agreement = agreement.get("judge_checker_agreement")
    s.judge_checker_ci = agreement.get("judge_checker_ci")
    s.judge_checker_pairs = agreement.get("judge_checker_pairs")
    stages = d.metrics.get("stages", {})
    s.evaluator_directed = stages.get("judgements", {}).get("evaluator_directed") or {}
    s.directed_chosen = stages.get("pairs", {}).get("evaluator_directed_chosen")
    s.directed_rejected = stages.get("pairs", {}).get("evaluator_directed_rejected")
    s.judge_accuracy = d.metrics.get("judge_accuracy") or {}
    s.persuasion = d.metrics.get("persuasion") or {}
    s.meta_outcomes = stages.get("meta_judgements", {}).get("outcomes") or {}
    s.judge_pairs = stages.get("pairs", {}).get("judge_pairs")
    s.judge_pairs_dropped = stages.get("pairs", {}).get("candidates_without_judge_pair") or {}
    if d.pairs is not None:
        s.pairs = len(d.pairs)
        s.pairs_by_source = dict(Counter(p.get("source", "judge") for p in d.pairs).most_common())
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
            accuracies = [row["rewards/accuracies"] for row in steps if "rewards/accuracies" in row]
            s.dpo_last_accuracy = accuracies[-1] if accuracies else None
    shift = d.metrics.get("stages", {}).get("dpo", {}).get("shift") or {}
    s.dpo_kl_per_token = shift.get("kl_per_token")
    s.dpo_chosen_logp_change = shift.get("chosen_logp_change")
    s.dpo_rejected_logp_change = shift.get("rejected_logp_change")
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


def agreement_cell(s: Summary) -> str:
    """`0.62 [0.51, 0.72]` or — (no checked pairs)."""
    if s.judge_checker_agreement is None:
        return "—"
    low, high = s.judge_checker_ci or (None, None)
    return f"{fmt(s.judge_checker_agreement)} [{fmt(low)}, {fmt(high)}]"


def funnel_rows(s: Summary) -> list[tuple[str, str, str]]:
    """(stage, count, detail) from generated prompts down to DPO."""
    candidates = f"truncated {s.candidates_truncated}, empty {s.candidates_empty}" if s.candidates is not None else ""
    failures = f"{pct(s.parse_failure_rate)} of samples; {counts(s.parse_errors)}" if s.judge_samples else ""
    dpo = ""
    if s.dpo_first_loss is not None:
        dpo = (
            f"loss {fmt(s.dpo_first_loss, 4)} → {fmt(s.dpo_last_loss, 4)}, "
            f"last reward margin {fmt(s.dpo_last_margin)}, last reward accuracy {fmt(s.dpo_last_accuracy)}"
        )
    shift = ""
    if s.dpo_kl_per_token is not None:
        shift = (
            f"KL(M_t+1 || M_t) {fmt(s.dpo_kl_per_token, 4)} per token; log-prob change chosen "
            f"{fmt(s.dpo_chosen_logp_change, 4)}, rejected {fmt(s.dpo_rejected_logp_change, 4)} per token"
        )
    lengths = None
    if s.mean_chosen_tokens is not None and s.mean_rejected_tokens is not None:
        lengths = s.mean_chosen_tokens - s.mean_rejected_tokens
    return [
        ("prompts generated", fmt(s.prompts_generated), "kept + rejected"),
        ("prompts kept", fmt(s.prompts_kept), ""),
        ("prompts rejected", fmt(s.prompts_rejected), counts(s.rejected_by_reason)),
        ("candidates", fmt(s.candidates), candidates),
        ("judge samples", fmt(s.judge_samples), ""),
        (
            "digit mass",
            fmt(s.mean_digit_mass),
            f"per 0.1 of mass: {s.digit_mass_histogram}" if s.digit_mass_histogram else "",
        ),
        ("parse failures", fmt(s.parse_failures), failures),
        ("candidates scored", fmt(s.scored), "" if s.unscored is None else f"unscored {s.unscored}"),
        (
            "prompts with instructions",
            fmt(s.checked_prompts),
            f"{pct(s.candidate_prompt_strict)} of their candidates follow every instruction (strict)"
            if s.candidate_prompt_strict is not None
            else "",
        ),
        (
            "judge vs checkers",
            agreement_cell(s),
            f"over {s.judge_checker_pairs} candidate pairs whose checkers differ (0.5 = chance)"
            if s.judge_checker_pairs
            else "",
        ),
        ("score vs length r", fmt(s.score_length_correlation), "Pearson r of candidate score and tokens"),
        (
            "evaluator-directed text",
            fmt(s.evaluator_directed.get("flagged")),
            f"{pct(s.evaluator_directed.get('share'))} of candidates; in chosen {fmt(s.directed_chosen)}, "
            f"in rejected {fmt(s.directed_rejected)}"
            if s.evaluator_directed
            else "",
        ),
        *([("meta-judge", fmt(sum(s.meta_outcomes.values())), counts(s.meta_outcomes))] if s.meta_outcomes else []),
        ("pairs", fmt(s.pairs), counts(s.pairs_by_source) if len(s.pairs_by_source) > 1 else ""),
        *(
            [("judge-role pairs", fmt(s.judge_pairs), f"left out: {counts(s.judge_pairs_dropped)}")]
            if s.judge_pairs is not None
            else []
        ),
        ("chosen − rejected tokens", fmt(lengths, 1), "mean over the pairs"),
        ("prompts without pair", fmt(s.prompts_without_pair), counts(s.drop_reasons)),
        ("DPO steps", "skipped" if s.dpo_skipped and not s.dpo_steps else fmt(s.dpo_steps), dpo),
        ("DPO moved the model", fmt(s.dpo_kl_per_token, 4), shift or "KL(M_t+1 || M_t) per token, after training"),
        *[
            (f"new model as judge: {Path(name).name}", accuracy_cell(m), judge_detail(m))
            for name, m in s.judge_accuracy.items()
        ],
        *[
            (
                f"new model as judge: {style} sentence",
                "—" if m.get("shift") is None else f"{m['shift']:+.2f} [{m['ci_low']:+.2f}, {m['ci_high']:+.2f}]",
                f"score shift over {m.get('n')} of iteration 1's lowest-scored answers; rose {m.get('rose')}, "
                f"fell {m.get('fell')}",
            )
            for style, m in s.persuasion.items()
        ],
    ]


def accuracy_cell(m: dict) -> str:
    """The judge's accuracy on human labels: rubric scores where measured, else the both-order comparison."""
    if m.get("accuracy") is not None:
        return f"{fmt(m['accuracy'])} [{fmt(m.get('ci_low'))}, {fmt(m.get('ci_high'))}]"
    if m.get("direct_accuracy") is not None:
        return f"{fmt(m['direct_accuracy'])} [{fmt(m.get('direct_ci_low'))}, {fmt(m.get('direct_ci_high'))}]"
    return "—"


def judge_detail(m: dict) -> str:
    parts = []
    if m.get("n_pairs") is not None:
        parts.append(f"rubric over {m['n_pairs']} human pairs; parse failures {pct(m.get('parse_failure_rate'))}")
    if m.get("direct_accuracy") is not None:
        parts.append(
            f"both orders {fmt(m['direct_accuracy'])} [{fmt(m.get('direct_ci_low'))}, {fmt(m.get('direct_ci_high'))}]"
            f" over {m.get('direct_pairs')}, position-consistent {pct(m.get('position_consistency'))}"
        )
    return "; ".join(parts)


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
    if isinstance(value, dict) and "ci_low" in value and ("value" in value or "accuracy" in value):
        # a metric with its 95% interval (reason.metrics): `0.383 [0.25, 0.50] (n=60)`
        v = value.get("value", value.get("accuracy"))
        n = value.get("n", value.get("n_pairs"))
        if not isinstance(v, (int, float)) or not math.isfinite(v):  # no pairs: NaN in reason.json
            return "—"
        return f"{v:.3f} [{value['ci_low']:.2f}, {value['ci_high']:.2f}]" + (f" (n={n})" if n is not None else "")
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
