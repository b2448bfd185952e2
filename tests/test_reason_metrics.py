"""Metrics over verified answers (`reason/metrics.py`) against hand-worked numbers."""

from __future__ import annotations

import math
from math import comb

import pytest

from selfreward.reason.metrics import (
    bootstrap_ci,
    is_correct,
    judge_accuracy_on_pairs,
    maj_at_k,
    maj_at_k_per_problem,
    majority_answer,
    mean_with_ci,
    paired_gain_with_ci,
    pass_at_k,
    rerank_at_k,
    rerank_at_k_per_problem,
)

# --------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(1, 0, 1), (1, 1, 1), (5, 1, 1), (5, 2, 2), (10, 3, 1), (10, 3, 5), (10, 0, 4), (20, 7, 10), (4, 2, 3)],
)
def test_pass_at_k_matches_closed_form(n: int, c: int, k: int) -> None:
    """1 - C(n-c, k) / C(n, k), with math.comb (C(a, k) = 0 for a < k)."""
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_by_hand() -> None:
    """n=5, c=2, k=2: C(3,2)/C(5,2) = 3/10, so 0.7; the product form: 1 - (1 - 2/4)(1 - 2/5) = 1 - 0.5*0.6 = 0.7.
    n=10, c=3, k=1: the plain fraction correct, 3/10."""
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_edges() -> None:
    """c = 0 -> 0; n - c < k -> 1 (every draw of k holds a correct one): n=4, c=2, k=3; c = n -> 1."""
    assert pass_at_k(8, 0, 3) == 0.0
    assert pass_at_k(4, 2, 3) == 1.0
    assert pass_at_k(4, 4, 1) == 1.0
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 0)


# --------------------------------------------------------------------------- majority vote


def test_majority_counts_equal_values_together() -> None:
    """`12`, `12.0`, `$12` are one value (3 votes) against `7` (2 votes)."""
    assert majority_answer(["7", "12", "12.0", "7", "$12"]) == "12"


def test_majority_ties_go_to_first_seen_and_none_never_wins() -> None:
    """[5, 3, 3, 5]: 2 votes each, 5 seen first -> 5. [None, None, 'x', 4]: only 4 is readable -> 4."""
    assert majority_answer(["5", "3", "3", "5"]) == "5"
    assert majority_answer(["3", "5", "5", "3"]) == "3"
    assert majority_answer([None, None, "no idea", "4"]) == "4"
    assert majority_answer([None, "twelve"]) is None
    assert majority_answer([]) is None


def test_maj_at_k_by_hand() -> None:
    """Three problems, references 4, 9, 2.
    k=1 (greedy): 4 right, 8 wrong, None wrong -> 1/3.
    k=3: [4, 5, 5] -> 5 wrong; [8, 9, 9] -> 9 right; [None, 2, None] -> 2 right -> 2/3.
    k=5: [4, 5, 5, 4, 4] -> 4 right; [8, 9, 9, 8, 8] -> 8 wrong; [None, 2, None, 3, 3] -> 3 wrong -> 1/3."""
    answers = [["4", "5", "5", "4", "4"], ["8", "9", "9", "8", "8"], [None, "2", None, "3", "3"]]
    refs = ["4", "9", "2"]
    assert maj_at_k_per_problem(answers, refs, 1) == [1.0, 0.0, 0.0]
    assert maj_at_k(answers, refs, 1) == pytest.approx(1 / 3)
    assert maj_at_k_per_problem(answers, refs, 3) == [0.0, 1.0, 1.0]
    assert maj_at_k_per_problem(answers, refs, 5) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="fewer than k=6"):
        maj_at_k(answers, refs, 6)


def test_is_correct() -> None:
    assert is_correct("$0.50", "1/2")
    assert not is_correct(None, "1")
    assert not is_correct("one", "1")


# --------------------------------------------------------------------------- rerank@k


def test_rerank_at_k_by_hand() -> None:
    """References 4, 9, 2.
    Problem 0: scores [1, 3, 3] for [4, 5, 4]: k=1 -> 4 (right); k=3 -> 3 ties at j=1, 2 -> first: 5 (wrong).
    Problem 1: scores [None, 2, 5] for [9, 8, 9]: k=1 -> 9 (the only one, unscored: right); k=2 -> 8 (None
    loses, wrong); k=3 -> 9 (right).
    Problem 2: scores [None, None, None]: no score, the first answer 2 (right) at every k."""
    answers = [["4", "5", "4"], ["9", "8", "9"], ["2", "7", "7"]]
    scores = [[1.0, 3.0, 3.0], [None, 2.0, 5.0], [None, None, None]]
    refs = ["4", "9", "2"]
    assert rerank_at_k_per_problem(answers, scores, refs, 1) == [1.0, 1.0, 1.0]
    assert rerank_at_k_per_problem(answers, scores, refs, 2) == [0.0, 0.0, 1.0]
    assert rerank_at_k_per_problem(answers, scores, refs, 3) == [0.0, 1.0, 1.0]
    assert rerank_at_k(answers, scores, refs, 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        rerank_at_k(answers, scores[:2], refs, 1)


# --------------------------------------------------------------------------- intervals


def test_bootstrap_contains_mean_and_is_deterministic() -> None:
    """Values 0/1 with mean 0.6 (6 of 10): the 95% interval holds 0.6, lies in [0, 1], and the same seed
    gives the same interval (another seed, another one); a constant list has a zero-width interval at its value."""
    values = [1, 0, 1, 1, 0, 1, 0, 1, 1, 0]
    low, high = bootstrap_ci(values, seed=3)
    assert 0.0 <= low < 0.6 < high <= 1.0
    assert bootstrap_ci(values, seed=3) == (low, high)
    spread = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.8]  # 0/1 values give few distinct quantiles; these give many
    assert bootstrap_ci(spread, seed=3) != bootstrap_ci(spread, seed=4)
    assert bootstrap_ci([0.25] * 5) == pytest.approx((0.25, 0.25))
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_mean_with_ci() -> None:
    out = mean_with_ci([1.0, 0.0, 1.0, 1.0], seed=0)
    assert out["value"] == 0.75 and out["n"] == 4
    assert out["ci_low"] <= 0.75 <= out["ci_high"]


# --------------------------------------------------------------------------- judge on right vs wrong


def test_judge_accuracy_on_pairs_by_hand() -> None:
    """Problem 0: correct [4, 2], incorrect [3]: pairs (4>3) 1, (2<3) 0 -> 1 of 2.
    Problem 1: correct [5], incorrect [5, 1, None]: (5=5) 0.5, (5>1) 1, None unscored -> 1.5 of 2.
    Problem 2: only correct answers: no pair, left out.
    Pooled: (1 + 1.5) / 4 = 0.625, 1 tie, 1 unscored, 2 problems."""
    out = judge_accuracy_on_pairs([[4.0, 2.0], [5.0], [3.0]], [[3.0], [5.0, 1.0, None], []], seed=0)
    assert out["accuracy"] == pytest.approx(0.625)
    assert (out["n_pairs"], out["n_problems"], out["ties"], out["unscored"]) == (4, 2, 1, 1)
    # resampling two problems: the ratio is 0.5 (problem 0 twice), 0.625 or 0.75 (problem 1 twice)
    assert 0.5 <= out["ci_low"] <= 0.625 <= out["ci_high"] <= 0.75
    empty = judge_accuracy_on_pairs([[1.0]], [[]])
    assert math.isnan(empty["accuracy"]) and empty["n_pairs"] == 0


def test_paired_gain_is_the_interval_of_the_difference() -> None:
    before = {f"p{i}": float(i % 2) for i in range(40)}  # half right
    same = paired_gain_with_ci(before, before)
    assert same["value"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0 and same["n"] == 40
    # 10 more right, none lost: +0.25; a paired interval excludes 0, though the two separate intervals overlap
    after = {p: 1.0 if (v or i < 20) else 0.0 for i, (p, v) in enumerate(before.items())}
    gain = paired_gain_with_ci(after, before)
    assert gain["value"] == pytest.approx(0.25) and gain["ci_low"] > 0
    a, b = mean_with_ci(list(after.values())), mean_with_ci(list(before.values()))
    assert a["ci_low"] < b["ci_high"]
    assert paired_gain_with_ci({"a": 1.0, "b": 1.0, "c": 0.0}, {"a": 0.0, "b": 1.0, "c": 0.0})["value"] == 1 / 3
    with pytest.raises(ValueError, match="same problems"):
        paired_gain_with_ci({"a": 1.0}, {"b": 1.0})
