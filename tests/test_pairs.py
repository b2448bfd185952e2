"""Pairing rules on hand-made scores."""

from __future__ import annotations

import math

import pytest

from selfreward.config import PairsConfig
from selfreward.loop.pairs import Scored, length_bias, make_pairs, score_se, select_pair
from selfreward.records import PreferencePair


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
    chosen, rejected = select_pair(
        [s("a", 5, 50), s("b", 5, 5), s("c", 1, 5), s("d", 1, 80)], PairsConfig(length_control=False)
    )
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


def test_a_truncated_best_answer_is_never_chosen() -> None:
    """b (5, cut off) is the best; the best ended answer is d (4) and it becomes chosen against c (1)."""
    scored = [s("a", 3), Scored("b", "cut", 5, 128, ended=False), s("c", 1), s("d", 4)]
    chosen, rejected = select_pair(scored, PairsConfig())
    assert (chosen.candidate_id, rejected.candidate_id) == ("d", "c")
    # only cut-off answers above the worst: no pair, dropped as `truncated`
    assert select_pair([Scored("b", "cut", 5, 128, ended=False), s("c", 1)], PairsConfig()) == "truncated"
    # a cut-off answer may still be the rejected one
    chosen, rejected = select_pair([s("a", 4), Scored("b", "cut", 1, 128, ended=False)], PairsConfig())
    assert (chosen.candidate_id, rejected.candidate_id) == ("a", "b")
    # the old behaviour, when asked for
    chosen, _ = select_pair(scored, PairsConfig(allow_truncated_chosen=True))
    assert chosen.candidate_id == "b"


def test_overlapping_samples_give_no_pair() -> None:
    """Samples [2, 3, 4] (mean 3, sd 1, se 0.577) vs [1.5, 2.5, 3.5] (mean 2.5, se 0.577): margin 0.5 <
    band 1.0 * sqrt(0.577^2 + 0.577^2) = 0.816 -> within_noise. Samples [4, 4.2, 4.4] (se 0.115) vs
    [1, 1.2, 1.4] (se 0.115): margin 3 > 0.163 -> a pair."""
    samples = {"a": [2, 3, 4], "b": [1.5, 2.5, 3.5], "c": [4, 4.2, 4.4], "d": [1, 1.2, 1.4]}
    se = {k: score_se([{"score": x} for x in v]) for k, v in samples.items()}
    assert se["a"] == pytest.approx(1 / math.sqrt(3)) and se["c"] == pytest.approx(0.2 / math.sqrt(3))
    cfg = PairsConfig(noise_z=1.0)
    assert select_pair([Scored("a", "x", 3, 5, se["a"]), Scored("b", "y", 2.5, 5, se["b"])], cfg) == "within_noise"
    chosen, rejected = select_pair([Scored("c", "x", 4.2, 5, se["c"]), Scored("d", "y", 1.2, 5, se["d"])], cfg)
    assert (chosen.candidate_id, rejected.candidate_id) == ("c", "d")
    # noise_z = 0 turns the band off
    assert isinstance(
        select_pair([Scored("a", "x", 3, 5, se["a"]), Scored("b", "y", 2.5, 5, se["b"])], PairsConfig(noise_z=0)),
        tuple,
    )


def test_score_se_of_one_direct_sample_is_its_digit_spread() -> None:
    """probs [0, 0, .5, .5, 0, 0]: mean 2.5, variance .5(.25) + .5(.25) = .25, sd 0.5."""
    assert score_se([{"score": 2.5, "probs": [0, 0, 0.5, 0.5, 0, 0]}]) == pytest.approx(0.5)
    assert score_se([{"score": 4}]) == 0.0
    assert score_se([{"score": 4}, {"score": None, "error": "no_score_line"}]) == 0.0


def test_make_pairs_reads_sample_spread_and_finish_reason() -> None:
    prompts = [{"prompt_id": "p", "text": "q"}, {"prompt_id": "r", "text": "q2"}]
    candidates = [
        {"candidate_id": "p-c0", "prompt_id": "p", "text": "A", "num_tokens": 5, "finish_reason": "stop"},
        {"candidate_id": "p-c1", "prompt_id": "p", "text": "B", "num_tokens": 5, "finish_reason": "stop"},
        {"candidate_id": "r-c0", "prompt_id": "r", "text": "C", "num_tokens": 128, "finish_reason": "length"},
        {"candidate_id": "r-c1", "prompt_id": "r", "text": "D", "num_tokens": 5, "finish_reason": "stop"},
    ]

    def judged(cid: str, xs: list[float]) -> dict:
        return {
            "candidate_id": cid,
            "prompt_id": cid[0],
            "score": sum(xs) / len(xs),
            "samples": [{"score": x} for x in xs],
        }

    judgements = [
        judged("p-c0", [2, 3, 4]),
        judged("p-c1", [1.5, 2.5, 3.5]),
        judged("r-c0", [5, 5]),
        judged("r-c1", [1, 1]),
    ]
    pairs, dropped = make_pairs(prompts, candidates, judgements, PairsConfig(noise_z=1.0))
    assert pairs == [] and dropped == {"within_noise": 1, "truncated": 1}


def test_length_bias_of_scores_and_pairs() -> None:
    """tokens [10, 20, 30] with scores [1, 2, 3]: r = 1; one pair 30 vs 10 tokens: +20."""
    candidates = [
        {"candidate_id": c, "num_tokens": n, "finish_reason": "stop"} for c, n in (("a", 10), ("b", 20), ("c", 30))
    ]
    judgements = [{"candidate_id": c, "score": x} for c, x in (("a", 1.0), ("b", 2.0), ("c", 3.0))]
    pair = PreferencePair([], [], [], "p", "c", "a", 3.0, 1.0, 2.0, 30, 10)
    bias = length_bias(candidates, judgements, [pair])
    assert bias["score_length_correlation"] == pytest.approx(1.0)
    assert bias["mean_chosen_minus_rejected_tokens"] == 20 and bias["truncated_candidates"] == 0


def test_replaying_fewer_candidates_and_judge_samples_scores_and_pairs_as_the_loop_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """benchmarks/bench_pair_yield.py: each prompt's first n candidates, each judged by its first K samples."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_pair_yield import replay

    from selfreward.config import JudgeConfig

    samples = {  # candidate -> its K = 3 sampled scores (None: no score line)
        "p1-c0": [5, 5, 5],
        "p1-c1": [1, 1, None],
        "p1-c2": [None, 4, 2],
        "p2-c0": [4, 1, 1],  # full mean 2.0, first sample 4
        "p2-c1": [2, 3, 3],  # full mean 2.67, first sample 2: one sample reverses the two
    }
    prompts = [{"prompt_id": "p1", "text": "q1"}, {"prompt_id": "p2", "text": "q2"}]
    candidates = [
        {"candidate_id": c, "prompt_id": c[:2], "text": f"answer {c}", "num_tokens": 10, "finish_reason": "stop"}
        for c in samples
    ]
    judgements = []
    for c, scores in samples.items():
        parsed = [x for x in scores if x is not None]
        judgements.append(
            {
                "candidate_id": c,
                "score": sum(parsed) / len(parsed),
                "num_parsed": len(parsed),
                "samples": [{"score": x, "error": None if x is not None else "no_score_line"} for x in scores],
            }
        )
    judge_cfg = JudgeConfig(mode="sampled", samples=3)
    run_pairs = {"p1": ("p1-c0", "p1-c1")}  # what the loop made of all of them

    full = replay(prompts, candidates, judgements, PairsConfig(), judge_cfg, 3, 3, run_pairs)
    # p2's margin (0.67) is inside the judge's noise (se 1.0 and 0.33): no pair
    assert (full["pairs"], full["dropped"], full["judge_samples"]) == (1, {"within_noise": 1}, 15)
    assert (full["pairs_on_a_one_sample_score"], full["pairs_equal_to_the_runs"]) == (0, 1)

    one = replay(prompts, candidates, judgements, PairsConfig(), judge_cfg, 3, 1, run_pairs)
    # p1-c2's first sample has no score: unscored; p2 now pairs c0 over c1, which the full scores reverse
    assert (one["pairs"], one["unscored_candidates"], one["judge_samples"]) == (2, 1, 5)
    assert one["pairs_on_a_one_sample_score"] == 2
    assert (one["pairs_equal_to_the_runs"], one["pairs_reversed_by_the_runs_scores"]) == (1, 1)

    two = replay(prompts, candidates, judgements, PairsConfig(), judge_cfg, 2, 2, run_pairs)
    # p2: 2.5 against 2.5 from the first two samples
    assert (two["candidates"], two["pairs"], two["dropped"]) == (4, 1, {"tie": 1})
