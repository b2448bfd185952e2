"""Statistics every evaluator uses: means with percentile-bootstrap intervals, paired gains, Wilson intervals,
and how often a scorer orders pairs as a ground truth does (pure functions; read and write nothing).

bootstrap_ratio
    Percentile interval of sum(numerators) / sum(denominators) over resampled units (items, prompts,
    problems): draw m of the m units with replacement, `n_resamples` times, with
    `numpy.random.default_rng(seed)`; the (1 - level)/2 and (1 + level)/2 quantiles. (nan, nan) when there is
    nothing to resample. With all denominators 1 this is the bootstrap of a mean.
mean_with_ci
    {value, ci_low, ci_high, n}: the mean of per-unit values and its bootstrap interval.
paired_gain_with_ci
    `mean_with_ci` of after[u] - before[u] over the same units (a paired bootstrap: both results on a unit stay
    together, so the interval is of the difference).
wilson
    The Wilson score interval of a proportion k / n (no resampling; good at small n and near 0 or 1).
length_controlled_rate
    AlpacaEval 2's length control, for one pair of systems: a logistic regression of the per-prompt preference
    (1 win, 0.5 tie, 0 loss) on tanh(length difference / its standard deviation), fitted by maximum likelihood;
    the rate at zero length difference is sigmoid(intercept). The interval refits on resampled prompts.
pairwise_agreement
    Over every pair of members of a group whose ground truth differs (e.g. two answers to one prompt of
    which one passes more constraints): 1 when the scorer ranks the truly better one higher, 0.5 for equal
    scores, 0 when reversed; pairs with a missing score are left out. Pooled over pairs, the interval
    resamples groups (their pair sums over their pair counts), as judge accuracy on human labels does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def mean(values: Sequence[float], empty: float | None = None) -> float | None:
    """The mean, or `empty` (None unless given, e.g. nan) for no values."""
    return sum(values) / len(values) if values else empty


def bootstrap_ratio(
    numerators: Sequence[float],
    denominators: Sequence[float],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of sum(num) / sum(den) over resampled units; (nan, nan) with nothing to resample."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if len(num) == 0 or n_resamples < 1:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(num), size=(n_resamples, len(num)))
    ratios = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-unit values; (nan, nan) for no values."""
    return bootstrap_ratio(values, [1.0] * len(values), n_resamples, seed, level)


def mean_with_ci(
    values: Sequence[float], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float | int]:
    """{value: the mean, ci_low, ci_high: `bootstrap_ci`, n: the number of units}; nan for no values."""
    low, high = bootstrap_ci(values, n_resamples, seed, level)
    value = float(np.mean(values)) if len(values) else math.nan
    return {"value": value, "ci_low": low, "ci_high": high, "n": len(values)}


def paired_gain_with_ci(
    after: Mapping[str, float],
    before: Mapping[str, float],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | int]:
    """`mean_with_ci` of after[u] - before[u] over the units u of `before`; both must have the same units.

    after = {a: 1, b: 1, c: 0}, before = {a: 0, b: 1, c: 0}: differences [1, 0, 0], value 1/3."""
    if set(after) != set(before):
        missing = sorted(set(before) ^ set(after))[:3]
        raise ValueError(f"the two results are not on the same problems or prompts (e.g. {missing})")
    return mean_with_ci([after[u] - before[u] for u in before], n_resamples, seed, level)


def wilson(k: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion k / n; (nan, nan) for n = 0. 8 of 10 -> (0.490, 0.943)."""
    if n <= 0:
        return math.nan, math.nan
    from statistics import NormalDist

    z = NormalDist().inv_cdf((1 + level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pairwise_agreement(
    groups: Sequence[Sequence[tuple[float, float | None]]],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | int]:
    """How often `score` orders a group's members as `truth` does, over pairs with different truth.

    `groups[i]` is a list of (truth, score) of group i's members (higher is better for both; a None or nan
    score leaves its pairs out, counted in `unscored`). Returns {agreement, ci_low, ci_high, n_pairs, n_groups,
    ties, unscored}: agreement is nan when there is no pair; `ties` counts pairs the scorer scored equal (each
    counted 0.5). Example: [[(2, 4.0), (1, 3.0), (1, 5.0)]] -> pairs (2 vs 1: 4 > 3 -> 1), (2 vs 1: 4 < 5 -> 0):
    agreement 0.5 over 2 pairs."""
    sums: list[float] = []
    counts: list[float] = []
    ties = unscored = 0
    for members in groups:
        total = pairs = 0.0
        for i, (truth_i, score_i) in enumerate(members):
            for truth_j, score_j in members[i + 1 :]:
                if truth_i == truth_j:
                    continue
                if _missing(score_i) or _missing(score_j):
                    unscored += 1
                    continue
                better, worse = (score_i, score_j) if truth_i > truth_j else (score_j, score_i)
                pairs += 1
                if better > worse:
                    total += 1.0
                elif better == worse:
                    total += 0.5
                    ties += 1
        if pairs:
            sums.append(total)
            counts.append(pairs)
    n_pairs = int(sum(counts))
    low, high = bootstrap_ratio(sums, counts, n_resamples, seed, level)
    return {
        "agreement": sum(sums) / n_pairs if n_pairs else math.nan,
        "ci_low": low,
        "ci_high": high,
        "n_pairs": n_pairs,
        "n_groups": len(counts),
        "ties": ties,
        "unscored": unscored,
    }


def _missing(score: float | None) -> bool:
    return score is None or (isinstance(score, float) and math.isnan(score))


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-x))


def logistic_intercept(y: np.ndarray, x: np.ndarray, l2: float = 0.1, steps: int = 50) -> float:
    """The intercept of a logistic regression of y in [0, 1] on one feature x in [-1, 1], by Newton's method. An
    L2 penalty on the slope (0.1: worth a tenth of one observation) keeps a sample that length separates finite:
    without it the slope runs off and the intercept follows the penalty, not the data."""
    design = np.stack([np.ones_like(x), x], axis=1)
    theta = np.zeros(2)
    penalty = np.diag([0.0, l2])
    for _ in range(steps):
        p = _sigmoid(design @ theta)
        grad = design.T @ (y - p) - penalty @ theta
        hess = (design * (p * (1 - p))[:, None]).T @ design + penalty + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta += step
        if np.abs(step).max() < 1e-8:
            break
    return float(theta[0])


def length_controlled_rate(
    preferences: Sequence[float],
    length_differences: Sequence[float],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | int]:
    """{value, ci_low, ci_high, n}: the win rate at zero length difference (module docstring). `preferences[i]`
    is 1 / 0.5 / 0 for a win / tie / loss on prompt i, `length_differences[i]` the length of the system's answer
    minus the other's. nan for no prompts; with all preferences equal, that value (nothing to regress)."""
    y, d = np.asarray(preferences, dtype=float), np.asarray(length_differences, dtype=float)
    n = len(y)
    if n == 0:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}

    def fit(idx: np.ndarray) -> float:
        yy, dd = y[idx], d[idx]
        if np.all(yy == yy[0]):
            return float(yy[0])
        scale = dd.std()
        x = np.tanh(dd / scale) if scale > 0 else np.zeros_like(dd)
        return float(_sigmoid(logistic_intercept(yy, x)))

    value = fit(np.arange(n))
    rng = np.random.default_rng(seed)
    draws = [fit(rng.integers(0, n, size=n)) for _ in range(n_resamples)]
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]) if draws else (math.nan, math.nan)
    return {"value": value, "ci_low": float(low), "ci_high": float(high), "n": n}
