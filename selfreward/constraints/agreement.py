"""Does the judge agree with the checkers? Over pairs of answers to the same prompt of which one follows more
of the prompt's checkable instructions (strict), how often the judge scored that one higher
(`stats.pairwise_agreement`: equal judge scores count 0.5, unscored answers are left out, the interval resamples
prompts).

This is Yuan et al.'s "is the judge getting better" on the loop's own data: measured on every iteration's
candidates, with ground truth no model wrote.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from selfreward.stats import mean, pairwise_agreement


def judge_checker_agreement(judgements: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Agreement of the judge's scores with the checkers' pass counts, from rows of `judgements.jsonl` (those
    with `checks`), and how often the candidates followed the instructions (strict and loose, per instruction
    and per prompt: all of a prompt's instructions)."""
    groups: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
    strict: list[float] = []
    loose: list[float] = []
    all_strict: list[float] = []
    for j in judgements:
        checks = j.get("checks")
        if not checks:
            continue
        groups[j["prompt_id"]].append((float(sum(checks["strict"])), j.get("score")))
        strict += [float(x) for x in checks["strict"]]
        loose += [float(x) for x in checks["loose"]]
        all_strict.append(float(all(checks["strict"])))
    result = pairwise_agreement(list(groups.values()), seed=seed)
    return {
        "judge_checker_agreement": result["agreement"] if result["n_pairs"] else None,
        "judge_checker_ci": [result["ci_low"], result["ci_high"]] if result["n_pairs"] else None,
        "judge_checker_pairs": result["n_pairs"],
        "judge_checker_prompts": result["n_groups"],
        "judge_checker_ties": result["ties"],
        "judge_checker_unscored": result["unscored"],
        "checked_candidates": len(all_strict),
        "candidate_instruction_strict": mean(strict),
        "candidate_instruction_loose": mean(loose),
        "candidate_prompt_strict": mean(all_strict),
    }
