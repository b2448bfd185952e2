"""Pairing rules on hand-made scores."""

from __future__ import annotations

import pytest

from selfreward.config import PairsConfig
from selfreward.loop.pairs import Scored, make_pairs, select_pair


def s(cid: str, score: float, tokens: int = 10, text: str | None = None) -> Scored:
    return Scored(cid, text or f"text {cid}", score, tokens)


def test_best_vs_worst() -> None:
    chosen, rejected = select_pair([s("a", 3), s("b", 5), s("c", 1), s("d", 4)], PairsConfig())
    assert (chosen.candidate_id, rejected.candidate_id) == ("b", "c")


def test_all_equal_is_a_tie() -> None:
    assert select_pair([s("a", 3), s("b", 3), s("c", 3)], PairsConfig()) == "tie"


def test_single_or_no_scored_candidate() -> None:
    assert select_pair([s("a", 3)], PairsConfig()) == "fewer_than_2_scored"
    assert select_pair([], PairsConfig()) == "fewer_than_2_scored"


def test_min_margin() -> None:
    assert select_pair([s("a", 3.0), s("b", 3.4)], PairsConfig(min_margin=0.5)) == "tie"
    assert isinstance(select_pair([s("a", 3.0), s("b", 3.6)], PairsConfig(min_margin=0.5)), tuple)


def test_first_best_and_first_worst_without_length_control() -> None:
    chosen, rejected = select_pair([s("a", 5, 50), s("b", 5, 5), s("c", 1, 5), s("d", 1, 80)], PairsConfig())
    assert (chosen.candidate_id, rejected.candidate_id) == ("a", "c")


def test_length_control_shortest_chosen_longest_rejected() -> None:
    cfg = PairsConfig(length_control=True)
    chosen, rejected = select_pair([s("a", 5, 50), s("b", 5, 5), s("c", 1, 5), s("d", 1, 80)], cfg)
    assert (chosen.candidate_id, rejected.candidate_id) == ("b", "d")


def test_length_control_with_tolerance_tiers() -> None:
    cfg = PairsConfig(length_control=True, tie_tolerance=0.5)
    # top tier: a (4.8), b (4.4); bottom tier: c (1.0), d (1.3)
    chosen, rejected = select_pair([s("a", 4.8, 90), s("b", 4.4, 20), s("c", 1.0, 10), s("d", 1.3, 70)], cfg)
    assert (chosen.candidate_id, rejected.candidate_id) == ("b", "d")


def _rows(scores: dict[str, list[float | None]]):
    prompts, candidates, judgements = [], [], []
    for pid, values in scores.items():
        prompts.append({"prompt_id": pid, "text": f"prompt {pid}"})
        for j, v in enumerate(values):
            cid = f"{pid}-c{j}"
            candidates.append({"candidate_id": cid, "prompt_id": pid, "text": f"answer {cid}", "num_tokens": 3 + j})
            judgements.append({"candidate_id": cid, "prompt_id": pid, "score": v})
    return prompts, candidates, judgements


def test_make_pairs_counts_drops_and_writes_trl_format() -> None:
    prompts, candidates, judgements = _rows(
        {"p0": [1, 4, 2], "p1": [3, 3], "p2": [None, 5, None], "p3": [None, None], "p4": [2.5, 0.5]}
    )
    pairs, dropped = make_pairs(prompts, candidates, judgements, PairsConfig())
    assert [p.prompt_id for p in pairs] == ["p0", "p4"]
    assert dropped == {"tie": 1, "fewer_than_2_scored": 2}
    p0 = pairs[0]
    assert p0.prompt == [{"role": "user", "content": "prompt p0"}]
    assert p0.chosen == [{"role": "assistant", "content": "answer p0-c1"}]
    assert p0.rejected == [{"role": "assistant", "content": "answer p0-c0"}]
    assert (p0.chosen_score, p0.rejected_score, p0.margin) == (4, 1, 3)
    assert (p0.chosen_tokens, p0.rejected_tokens) == (4, 3)
    assert pairs[1].margin == pytest.approx(2.0)


def test_identical_after_truncation_is_dropped() -> None:
    prompts, candidates, judgements = _rows({"p0": [1, 4]})
    pairs, dropped = make_pairs(prompts, candidates, judgements, PairsConfig(), identical=lambda p, a, b: True)
    assert pairs == [] and dropped == {"identical_after_truncation": 1}


def test_truncation_check_on_real_tokenizer(embedded_model) -> None:
    from transformers import AutoTokenizer

    from selfreward.loop.pairs import truncation_check

    tok = AutoTokenizer.from_pretrained(embedded_model)
    same_start = "word " * 200
    identical = truncation_check(tok, max_length=64)
    assert identical("Q", same_start + "end A", same_start + "end B")
    assert not identical("Q", "short A", "short B")
