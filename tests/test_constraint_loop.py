"""Checkable instructions in the loop: prompts that carry them, the judge-checker agreement, each
`pairs.source` on hand-made judgements, and the statistics they rest on."""

from __future__ import annotations

import math
import random

import pytest

from selfreward.config import PairsConfig
from selfreward.constraints.agreement import judge_checker_agreement
from selfreward.loop.pairs import make_pairs
from selfreward.loop.prompt_gen import attach_constraints, normalise
from selfreward.records import Prompt
from selfreward.stats import paired_gain_with_ci, pairwise_agreement, wilson


def judgement(cid: str, pid: str, score: float | None, strict: list[bool] | None) -> dict:
    checks = None if strict is None else {"strict": strict, "loose": strict}
    return {"candidate_id": cid, "prompt_id": pid, "score": score, "num_parsed": 3, "samples": [], "checks": checks}


def test_judge_checker_agreement_by_hand() -> None:
    rows = [
        # prompt a: passes 2 / 1 / 0 instructions; the judge orders (2 vs 1) right, (2 vs 0) right, (1 vs 0) tie
        judgement("a0", "a", 4.0, [True, True]),
        judgement("a1", "a", 3.0, [True, False]),
        judgement("a2", "a", 3.0, [False, False]),
        # prompt b: 1 vs 0, the judge reverses it; the unscored third is left out
        judgement("b0", "b", 2.0, [True]),
        judgement("b1", "b", 5.0, [False]),
        judgement("b2", "b", None, [False]),
        # prompt c: everyone passes the same: no pair; d: no instructions
        judgement("c0", "c", 1.0, [True]),
        judgement("c1", "c", 5.0, [True]),
        judgement("d0", "d", 1.0, None),
    ]
    m = judge_checker_agreement(rows)
    assert m["judge_checker_pairs"] == 4 and m["judge_checker_prompts"] == 2
    assert m["judge_checker_agreement"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert m["judge_checker_ties"] == 1 and m["judge_checker_unscored"] == 1
    low, high = m["judge_checker_ci"]
    assert 0 <= low <= m["judge_checker_agreement"] <= high <= 1
    assert m["checked_candidates"] == 8
    assert m["candidate_instruction_strict"] == pytest.approx(6 / 11)
    assert m["candidate_prompt_strict"] == pytest.approx(4 / 8)


def test_no_checked_candidates_gives_no_agreement() -> None:
    m = judge_checker_agreement([judgement("x", "p", 3.0, None)])
    assert m["judge_checker_agreement"] is None and m["judge_checker_pairs"] == 0


def one_prompt(scores_and_checks: list[tuple[float, list[bool], int]], instructions: bool = True):
    prompts = [{"prompt_id": "p", "text": "Write.", "instruction_id_list": ["x"] * 2 if instructions else []}]
    candidates, judgements = [], []
    for i, (score, strict, tokens) in enumerate(scores_and_checks):
        candidates.append({"candidate_id": f"c{i}", "prompt_id": "p", "text": f"answer {i}", "num_tokens": tokens})
        judgements.append(judgement(f"c{i}", "p", score, strict if instructions else None))
    return prompts, candidates, judgements


CANDIDATES = [
    (5.0, [False, False], 10),  # the judge's favourite follows nothing
    (3.0, [True, True], 10),  # follows both
    (2.0, [True, False], 10),
    (1.0, [True, False], 10),  # the judge's least favourite follows one
]


@pytest.mark.parametrize(
    ("source", "chosen", "rejected", "kind"),
    [
        ("judge", "c0", "c3", "judge"),
        ("checker", "c1", "c0", "checker"),
        ("judge_checked", "c1", "c3", "judge_checked"),
    ],
)
def test_each_pairs_source_on_a_hand_made_judgements_file(source: str, chosen: str, rejected: str, kind: str) -> None:
    cfg = PairsConfig(source=source, noise_z=0.0)
    pairs, dropped = make_pairs(*one_prompt(CANDIDATES), cfg)
    assert dropped == {}
    (pair,) = pairs
    assert (pair.chosen_id, pair.rejected_id, pair.source) == (chosen, rejected, kind)
    passed = {"c0": 0, "c1": 2, "c2": 1, "c3": 1}
    assert (pair.chosen_passed, pair.rejected_passed) == (passed[chosen], passed[rejected])


def test_checker_ties_are_broken_by_the_judge_and_equal_passes_fall_back_to_the_judge() -> None:
    cfg = PairsConfig(source="checker", noise_z=0.0, length_control=False)
    both = [(2.0, [True, True], 10), (4.0, [True, True], 10), (3.0, [False, True], 10), (1.0, [False, True], 10)]
    (pair,), _ = make_pairs(*one_prompt(both), cfg)
    assert (pair.chosen_id, pair.rejected_id, pair.source) == ("c1", "c3", "checker")
    same = [(2.0, [True, False], 10), (4.0, [True, False], 10), (1.0, [False, True], 10)]
    (pair,), _ = make_pairs(*one_prompt(same), cfg)
    assert (pair.chosen_id, pair.rejected_id, pair.source) == ("c1", "c2", "judge")


def test_judge_checked_drops_a_prompt_whose_every_candidate_fails_what_another_follows() -> None:
    crossed = [(5.0, [True, False], 10), (1.0, [False, True], 10)]
    pairs, dropped = make_pairs(*one_prompt(crossed), PairsConfig(source="judge_checked", noise_z=0.0))
    assert pairs == [] and dropped == {"fails_instruction": 1}


def test_prompts_without_instructions_use_the_judge_whatever_the_source() -> None:
    for source in ("checker", "judge_checked"):
        (pair,), _ = make_pairs(*one_prompt(CANDIDATES, instructions=False), PairsConfig(source=source, noise_z=0))
        assert (pair.chosen_id, pair.rejected_id, pair.source, pair.chosen_passed) == ("c0", "c3", "judge", -1)


def test_attach_constraints_is_seeded_gives_the_fraction_and_keeps_the_models_prompt_as_base() -> None:
    def make() -> list[Prompt]:
        return [Prompt(f"p{i}", f"Write a note about topic number {i}.", "self-instruct") for i in range(10)]

    a, b = make(), make()
    attach_constraints(a, 0.5, random.Random("s"), set())
    attach_constraints(b, 0.5, random.Random("s"), set())
    assert [p.text for p in a] == [p.text for p in b]
    with_instructions = [p for p in a if p.instruction_id_list]
    assert len(with_instructions) == 5
    for p in with_instructions:
        assert p.text.startswith(p.base + " ") and len(p.kwargs) == len(p.instruction_id_list)
    assert all(p.base == "" for p in a if not p.instruction_id_list)
    # a draw equal to an evaluation prompt is drawn again
    c = make()
    attach_constraints(c, 1.0, random.Random("s"), {normalise(p.text) for p in a if p.instruction_id_list})
    assert not {p.text for p in c} & {p.text for p in a if p.instruction_id_list}


def test_pairwise_agreement_and_intervals_by_hand() -> None:
    r = pairwise_agreement([[(2, 4.0), (1, 3.0), (1, 5.0)]])
    assert r["agreement"] == 0.5 and r["n_pairs"] == 2
    assert math.isnan(pairwise_agreement([])["agreement"])
    low, high = wilson(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    gain = paired_gain_with_ci({"a": 1, "b": 1, "c": 0}, {"a": 0, "b": 1, "c": 0})
    assert gain["value"] == pytest.approx(1 / 3) and gain["n"] == 3


def test_checker_never_inverts_and_judge_checked_names_why_it_dropped() -> None:
    # only a cut-off answer follows more: the judge's pair would choose one that follows less than the rejected
    prompts, candidates, judgements = one_prompt(
        [(5.0, [True, False], 10), (1.0, [True, False], 10), (0.0, [True, True], 10)]
    )
    candidates[2]["finish_reason"] = "length"
    pairs, dropped = make_pairs(prompts, candidates, judgements, PairsConfig(source="checker", noise_z=0.0))
    assert pairs == [] and dropped == {"truncated": 1}
    # judge_checked: the eligible candidate scores no higher than the worst: dropped because of the instruction
    prompts, candidates, judgements = one_prompt([(5.0, [False], 10), (2.0, [True], 10), (2.0, [False], 10)])
    pairs, dropped = make_pairs(prompts, candidates, judgements, PairsConfig(source="judge_checked", noise_z=0.0))
    assert pairs == [] and dropped == {"fails_instruction": 1}


def test_the_generator_never_asks_to_repeat_a_request_that_breaks_another_instruction() -> None:
    from selfreward.constraints.checkers import follows
    from selfreward.constraints.generator import LIMITS, add_constraints

    rng = random.Random(1)
    base = "Plan a walk in the garden, briefly, with eleven easy steps."
    for _ in range(300):
        c = add_constraints(base, rng)
        if "combination:repeat_prompt" in c.instruction_id_list:
            for i, k in zip(c.instruction_id_list, c.kwargs, strict=True):
                if i in LIMITS or "less than" in k.values():
                    assert follows(i, k, base), (i, k)
