"""Metrics over verified answers to problems with checkable answers (pure functions; reads and writes nothing).

Inputs are per problem: `answers[i]` the extracted answers (`verifier.extract_answer`, raw strings or None)
of the samples of problem i in sampling order, `references[i]` its reference answer. An answer is correct
when it reads as the same exact number (`verifier.normalize_number`); None or unreadable is incorrect.

pass_at_k(n, c, k)
    Chen et al. 2021's unbiased estimator from n samples of which c are correct:
    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i); 1.0 when n - c < k.
maj_at_k
    Fraction of problems whose majority answer among the first k samples is correct (`majority_answer`:
    votes counted by exact value, unreadable answers never win, a tie goes to the value seen first).
    With k = 1 and the greedy answer first this is greedy accuracy.
rerank_at_k
    Per problem, the answer with the highest score (a judge's or a reward model's) among the first k is
    checked; a tie goes to the earlier answer; a None or nan score loses to any score, and with no score
    at all the first answer is checked.
bootstrap_ci, mean_with_ci, paired_gain_with_ci
    From `selfreward.stats` (one statistics module for every evaluator): the bootstrap over problems, and a
    model's gain over another on the same problems (a paired bootstrap).
judge_accuracy_on_pairs
    Does a judge tell right from wrong? Over every (correct, incorrect) pair of answers to the same problem:
    1 if the correct one scored higher, 0.5 for equal scores, 0 otherwise, pooled over pairs; the interval
    resamples problems (their summed pair scores over their summed pairs), as `judge_metrics` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from selfreward.reason.verifier import format_number, normalize_number
from selfreward.stats import bootstrap_ci, mean_with_ci, paired_gain_with_ci, pairwise_agreement

__all__ = ["bootstrap_ci", "mean_with_ci", "paired_gain_with_ci"]  # the statistics, from `stats`, used here

# --------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if k < 1 or n < 1 or c < 0:
        raise ValueError(f"pass@k needs n >= 1, k >= 1, c >= 0; got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@k needs k <= n; got k={k} > n={n}")
    if c > n:
        raise ValueError(f"pass@k needs c <= n; got c={c} > n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


# --------------------------------------------------------------------------- majority vote and reranking


def _value(answer: str | None) -> Fraction | None:
    return normalize_number(answer)[0] if answer is not None else None


def is_correct(answer: str | None, reference: str) -> bool:
    """Does `answer` read as exactly the number `reference`? An unreadable answer is incorrect."""
    value = _value(answer)
    return value is not None and value == _value(reference)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most common answer by exact value, in canonical form (`format_number`); ties go to the value whose
    first vote came first; None and unreadable answers never win (None when nothing is readable)."""
    counts: dict[Fraction, int] = {}
    for answer in answers:
        value = _value(answer)
        if value is not None:
            counts[value] = counts.get(value, 0) + 1  # dicts keep first-seen order
    if not counts:
        return None
    best = max(counts.values())
    return format_number(next(v for v, count in counts.items() if count == best))


def _check_lengths(k: int, references: Sequence[str], **per_problem: Sequence[Sequence[Any]]) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for name, rows in per_problem.items():
        if len(rows) != len(references):
            raise ValueError(f"{len(rows)} rows of {name} for {len(references)} references")
        short = [i for i, row in enumerate(rows) if len(row) < k]
        if short:
            raise ValueError(f"problem {short[0]} has {len(rows[short[0]])} {name}, fewer than k={k}")


def maj_at_k_per_problem(answers: Sequence[Sequence[str | None]], references: Sequence[str], k: int) -> list[float]:
    """1.0 or 0.0 per problem: is the majority of its first k answers correct?"""
    _check_lengths(k, references, answers=answers)
    return [float(is_correct(majority_answer(row[:k]), ref)) for row, ref in zip(answers, references, strict=True)]


def maj_at_k(answers: Sequence[Sequence[str | None]], references: Sequence[str], k: int) -> float:
    """Fraction of problems whose majority answer among the first k is correct (nan for no problems)."""
    values = maj_at_k_per_problem(answers, references, k)
    return float(np.mean(values)) if values else math.nan


def _score(score: float | None) -> float:
    return -math.inf if score is None or math.isnan(score) else float(score)


def rerank_at_k_per_problem(
    answers: Sequence[Sequence[str | None]],
    scores: Sequence[Sequence[float | None]],
    references: Sequence[str],
    k: int,
) -> list[float]:
    """1.0 or 0.0 per problem: is the best-scored of its first k answers correct?"""
    _check_lengths(k, references, answers=answers, scores=scores)
    out = []
    for row, row_scores, ref in zip(answers, scores, references, strict=True):
        first = [_score(s) for s in row_scores[:k]]
        best = max(range(k), key=lambda j: (first[j], -j))  # highest score, then earliest
        out.append(float(is_correct(row[best], ref)))
    return out


def rerank_at_k(
    answers: Sequence[Sequence[str | None]],
    scores: Sequence[Sequence[float | None]],
    references: Sequence[str],
    k: int,
) -> float:
    """Fraction of problems whose best-scored answer among the first k is correct (nan for no problems)."""
    values = rerank_at_k_per_problem(answers, scores, references, k)
    return float(np.mean(values)) if values else math.nan


# --------------------------------------------------------------------------- intervals


# --------------------------------------------------------------------------- the judge on right vs wrong


def judge_accuracy_on_pairs(
    correct_scores: Sequence[Sequence[float | None]],
    incorrect_scores: Sequence[Sequence[float | None]],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | int]:
    """How often a judge scores a correct answer above an incorrect one to the same problem.

    `correct_scores[i]` / `incorrect_scores[i]`: the judge's scores of problem i's correct / incorrect answers.
    Pairs with a None or nan score are left out (`unscored`); problems without a scored pair are left out of
    the interval. Returns {accuracy, ci_low, ci_high, n_pairs, n_problems, ties, unscored}; accuracy nan when
    there is no pair."""
    if len(correct_scores) != len(incorrect_scores):
        raise ValueError(f"{len(correct_scores)} problems of correct scores, {len(incorrect_scores)} of incorrect")
    groups = [
        [(1.0, r) for r in right] + [(0.0, w) for w in wrong]
        for right, wrong in zip(correct_scores, incorrect_scores, strict=True)
    ]
    r = pairwise_agreement(groups, n_resamples, seed, level)
    return {
        "accuracy": r["agreement"],
        "ci_low": r["ci_low"],
        "ci_high": r["ci_high"],
        "n_pairs": r["n_pairs"],
        "n_problems": r["n_groups"],
        "ties": r["ties"],
        "unscored": r["unscored"],
    }
