"""Judge vs human labels: agreement metrics (pure functions; the label files are read by
`inputs.load_labels`, whose docstring gives the formats).

Metrics. A judge score is higher-is-better (0-5, or the mean of K samples); None means the judge
gave no score. `judge_scores[i][j]` scores response j of item i, `human_ranks[i][j]` is its rank.

pairwise_accuracy
    Over every pair (j, k), j < k, of responses within an item:
    - the humans tie the pair (equal ranks): excluded, counted in `human_ties`;
    - else either judge score is None (or nan): excluded, counted in `unscored`;
    - else the pair counts (`n_pairs`) and scores 1 if the judge orders it as the humans do,
      0.5 if the judge gives both the same score (also counted in `judge_ties`), 0 if reversed.
    accuracy = sum of pair scores / n_pairs (pairs pooled over items; nan when n_pairs = 0).
    ci_low, ci_high: percentile bootstrap interval (default 95%) resampling items, not pairs: draw
    m items with replacement from the m items that have a counted pair, accuracy = their summed pair
    scores / their summed pairs; the 2.5th and 97.5th percentiles over `n_resamples` draws of a
    `numpy.random.default_rng(seed)` Generator. nan when there is nothing to resample.

Ranking metrics, per item, then averaged over items (`ranking_metrics`). Items with any None
judge score are left out of all four and counted in `unscored_items`.
    exact_match   1 if the judge's ranking equals the human ranking, ties included: for every pair,
                  sign(score_j - score_k) == sign(rank_k - rank_j). A judge tie matches only a human
                  tie of the same pair.
    five_best     Yuan et al. 2024's "5-best %": 1 if a response the humans ranked best (lowest rank;
                  any of them when the humans tie for best) gets the top of the scale from the judge:
                  5, or at least 4.5 for a mean or expected score (`FIVE_BEST_AT`). A judge that ties
                  everything at 3 scores 0 here, not 1.
    top_is_best   The judge's highest score goes to a human-best response, with judge ties credited
                  1/|ties|: the share of the responses sharing the judge's top score that the humans
                  ranked best. [2, 2, 1] vs ranks [1, 2, 3] -> 1/2; an all-equal judge of 3 responses
                  gets 1/3 (chance), not 1. How often the top was shared: `judge_top_ties`.
    spearman      Spearman's rho between the judge scores and the negated human ranks (positive =
                  agreement): the Pearson correlation of their average ranks (ties get the mean of
                  the positions they span).
    kendall_tau   Kendall's tau-b between the same two: over all pairs, C concordant, D discordant,
                  T_x pairs tied in judge score, T_y pairs tied in human rank, n0 = n(n-1)/2;
                  tau_b = (C - D) / sqrt((n0 - T_x)(n0 - T_y)).
    Both correlations are nan for an item where either side is constant; nan items are excluded from
    the average and `n_spearman`, `n_kendall` say how many items were averaged.

score_distribution
    Histogram over the scores 0..5 of the scores given, None skipped, each rounded to the nearest
    integer with Python's round (halves to even), as `judge.judgement_metrics` does.
parse_failure_rate
    Fraction of judge samples whose score is None (0.0 for no samples, as in `judge.judgement_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from selfreward.judge_text import MAX_SCORE
from selfreward.stats import mean, pairwise_agreement

# --------------------------------------------------------------------------- metrics


def pairwise_accuracy(
    judge_scores: Sequence[Sequence[float | None]],
    human_ranks: Sequence[Sequence[int]],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Pairwise agreement of judge and humans with an item-level bootstrap interval (module docstring).

    Example: item 1 scores [4, 2, 3], ranks [1, 2, 3]: pairs (0,1) 4>2 right = 1, (0,2) 4>3 right = 1,
    (1,2) 2<3 reversed = 0. Item 2 scores [3, 3], ranks [1, 2]: judge tie = 0.5. Item 3 [5, None]:
    unscored. Item 4 ranks [1, 1]: human tie. accuracy = (1 + 1 + 0 + 0.5) / 4 = 0.625.
    """
    _check_shapes(judge_scores, human_ranks)
    human_ties = sum(
        1 for ranks in human_ranks for j in range(len(ranks)) for k in range(j + 1, len(ranks)) if ranks[j] == ranks[k]
    )
    # better = lower rank: the truth of a response is its negated rank (`stats.pairwise_agreement`)
    groups = [
        [(-float(rank), score) for rank, score in zip(ranks, scores, strict=True)]
        for scores, ranks in zip(judge_scores, human_ranks, strict=True)
    ]
    r = pairwise_agreement(groups, n_resamples, seed, confidence)
    return {
        "accuracy": r["agreement"],
        "n_pairs": r["n_pairs"],
        "judge_ties": r["ties"],
        "unscored": r["unscored"],
        "human_ties": human_ties,
        "n_items": r["n_groups"],
        "ci_low": r["ci_low"],
        "ci_high": r["ci_high"],
    }


def exact_match(scores: Sequence[float], ranks: Sequence[int]) -> bool:
    """The judge's ranking equals the human one, ties included.

    [3, 2, 1] vs ranks [1, 2, 3]: True. [2, 2, 1] vs [1, 1, 2]: True (same tie). [2, 2, 1] vs [1, 2, 3]: False.
    """
    n = len(ranks)
    return all(_sign(scores[j] - scores[k]) == _sign(ranks[k] - ranks[j]) for j in range(n) for k in range(j + 1, n))


FIVE_BEST_AT = 4.5
"""A score at least this counts as the top of the 5-point scale (5 for integer scores)."""


def five_best(scores: Sequence[float], ranks: Sequence[int]) -> bool:
    """A human-best response (lowest rank) gets the top of the scale: a score >= 4.5 (5 when integer).

    [3, 5, 1] vs ranks [2, 1, 3]: the human best scores 5, True. [5, 3] vs [2, 1]: the best scores 3, False.
    [4.6, 2] vs [1, 2]: an expected score of 4.6, True."""
    best = min(ranks)
    return any(s >= FIVE_BEST_AT for s, r in zip(scores, ranks, strict=True) if r == best)


def top_is_best(scores: Sequence[float], ranks: Sequence[int]) -> float:
    """Share of the responses holding the judge's highest score that the humans ranked best (ties 1/|ties|).

    [1, 5, 5] vs ranks [2, 1, 3]: top {1, 2}, human best {1} -> 1/2. [4, 4, 4] vs [1, 2, 3] -> 1/3."""
    top = max(scores)
    best = min(ranks)
    holders = [r for s, r in zip(scores, ranks, strict=True) if s == top]
    return sum(r == best for r in holders) / len(holders)


def spearman(scores: Sequence[float], ranks: Sequence[int]) -> float:
    """Spearman's rho of judge scores and negated human ranks; nan when either is constant.

    [2, 2, 1] vs ranks [1, 2, 3]: average ranks x = [2.5, 2.5, 1], y = [3, 2, 1]; centred
    [.5, .5, -1] and [1, 0, -1]; rho = 1.5 / sqrt(1.5 * 2) = 0.866.
    """
    return _pearson(_average_ranks(list(scores)), _average_ranks([-r for r in ranks]))


def kendall_tau(scores: Sequence[float], ranks: Sequence[int]) -> float:
    """Kendall's tau-b of judge scores and negated human ranks; nan when either is constant.

    [2, 2, 1] vs ranks [1, 2, 3]: pair (0,1) tied in score, (0,2) and (1,2) concordant: C = 2, D = 0,
    n0 = 3, T_x = 1, T_y = 0; tau_b = 2 / sqrt(2 * 3) = 0.816.
    """
    n = len(ranks)
    concordant = discordant = tied_x = tied_y = 0
    for j in range(n):
        for k in range(j + 1, n):
            dx, dy = _sign(scores[j] - scores[k]), _sign(ranks[k] - ranks[j])
            tied_x += dx == 0
            tied_y += dy == 0
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    n0 = n * (n - 1) // 2
    denominator = (n0 - tied_x) * (n0 - tied_y)
    return (concordant - discordant) / math.sqrt(denominator) if denominator else math.nan


def ranking_metrics(
    judge_scores: Sequence[Sequence[float | None]], human_ranks: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """exact_match, five_best, top_is_best, spearman, kendall_tau per item, averaged over items (module
    docstring)."""
    _check_shapes(judge_scores, human_ranks)
    exact, best, top_best, rhos, taus = [], [], [], [], []
    unscored = top_ties = 0
    for raw, ranks in zip(judge_scores, human_ranks, strict=True):
        scores = [float(s) for s in raw if s is not None and not math.isnan(s)]
        if len(scores) < len(raw):
            unscored += 1
            continue
        exact.append(exact_match(scores, ranks))
        best.append(five_best(scores, ranks))
        top_best.append(top_is_best(scores, ranks))
        top_ties += scores.count(max(scores)) > 1
        rhos.append(spearman(scores, ranks))
        taus.append(kendall_tau(scores, ranks))
    rhos = [r for r in rhos if not math.isnan(r)]
    taus = [t for t in taus if not math.isnan(t)]
    return {
        "exact_match": mean(exact, math.nan),
        "five_best": mean(best, math.nan),
        "top_is_best": mean(top_best, math.nan),
        "judge_top_ties": top_ties,
        "spearman": mean(rhos, math.nan),
        "n_spearman": len(rhos),
        "kendall_tau": mean(taus, math.nan),
        "n_kendall": len(taus),
        "n_items": len(exact),
        "unscored_items": unscored,
    }


def score_distribution(scores: Iterable[float | None]) -> list[int]:
    """Counts of the scores 0..5 after rounding (halves to even); None skipped.

    [0, 2.4, 2.5, 2.6, 5, None] -> rounded 0, 2, 2, 3, 5 -> [1, 0, 2, 1, 0, 1].
    """
    histogram = [0] * (MAX_SCORE + 1)
    for s in scores:
        if s is None or math.isnan(s):
            continue
        if not 0 <= s <= MAX_SCORE:
            raise ValueError(f"score {s} is outside 0..{MAX_SCORE}")
        histogram[int(round(s))] += 1
    return histogram


def parse_failure_rate(scores: Sequence[float | None]) -> float:
    """Fraction of judge samples without a score: [3, None, 4, None] -> 2 / 4 = 0.5; [] -> 0.0."""
    return sum(s is None for s in scores) / len(scores) if scores else 0.0


def _check_shapes(judge_scores: Sequence[Sequence[float | None]], human_ranks: Sequence[Sequence[int]]) -> None:
    if len(judge_scores) != len(human_ranks):
        raise ValueError(f"{len(judge_scores)} items of judge scores for {len(human_ranks)} items of human ranks")
    for i, (scores, ranks) in enumerate(zip(judge_scores, human_ranks, strict=True)):
        if len(scores) != len(ranks):
            raise ValueError(f"item {i}: {len(scores)} judge scores for {len(ranks)} human ranks")


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _average_ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given the mean of the positions they span: [2, 2, 1] -> [2.5, 2.5, 1]."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    vx, vy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return cov / math.sqrt(vx * vy) if vx and vy else math.nan
