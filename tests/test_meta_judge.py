"""A judge that learns: the meta-judge on hand-made judgements (consistent and inconsistent verdicts in both
orders), judge-role pairs with the share cap and their funnel, anchored rejection, and a DPO dataset holding both
pair kinds that TRL trains on."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfreward.artifacts import IterPaths, read_jsonl, write_jsonl
from selfreward.config import DPOStageConfig, MetaJudgeConfig, PairsConfig
from selfreward.loop import meta_judge
from selfreward.loop.pairs import Scored, dataset_rows, judge_pairs, make_pairs, select_pair
from selfreward.records import JudgePair
from tests.test_pairwise_judge import LetterJudge

# P(" A"), P(" B") the fake meta-judge gives for (judgement shown as A, judgement shown as B)
RAW = {
    ("fair 4", "harsh 1"): [0.8, 0.2],  # prefers "fair 4" in both orders
    ("harsh 1", "fair 4"): [0.3, 0.6],
    ("long 5", "short 2"): [0.7, 0.3],  # prefers whatever is shown first: inconsistent
    ("short 2", "long 5"): [0.6, 0.4],
}


class MetaJudge(LetterJudge):
    TAG = "judgement"
    RAW = RAW

    def token_probs(self, prompts: list[str], token_ids: list[int]) -> list[list[float]]:
        assert all(p.endswith("Better judgement:") for p in prompts)
        return super().token_probs(prompts, token_ids)


def sample(text: str, score: float | None) -> dict:
    return {"text": text, "score": score, "error": None if score is not None else "no_score_line"}


def judged(cid: str, samples: list[dict]) -> dict:
    scores = [x["score"] for x in samples if x["score"] is not None]
    return {
        "candidate_id": cid,
        "prompt_id": cid.split("-")[0],
        "score": sum(scores) / len(scores) if scores else None,
        "num_parsed": len(scores),
        "samples": samples,
    }


def write_iteration(it: IterPaths) -> None:
    prompts = [{"prompt_id": p, "text": f"Request {p}.", "source": "test"} for p in ("p", "q", "r", "s")]
    write_jsonl(it.prompts, prompts)
    write_jsonl(
        it.candidates,
        [
            {
                "candidate_id": f"{p}-c0",
                "prompt_id": p,
                "text": f"Answer {p}.",
                "num_tokens": 2,
                "finish_reason": "stop",
            }
            for p in ("p", "q", "r", "s")
        ],
    )
    write_jsonl(
        it.judgements,
        [
            judged("p-c0", [sample("fair 4", 4), sample("harsh 1", 1), sample("fair 4", 4)]),
            judged("q-c0", [sample("short 2", 2), sample("long 5", 5)]),
            judged("r-c0", [sample("same 3", 3), sample("same 3", 3)]),
            judged("s-c0", [sample("no score", None), sample("fair 4", 4)]),
        ],
    )


def test_which_two_judgements_are_compared() -> None:
    assert meta_judge.judgements_to_compare(judged("p-c0", [sample("a", 3), sample("b", None), sample("c", 5)])) == (
        2,
        0,
    )
    assert meta_judge.judgements_to_compare(judged("p-c0", [sample("a", 4), sample("b", 4)])) == "same_score"
    assert meta_judge.judgements_to_compare(judged("p-c0", [sample("a", 4), sample("b", None)])) == "unparsed"


def test_a_verdict_counts_only_when_it_holds_in_both_orders() -> None:
    assert meta_judge.meta_verdict(0.7, 0.2) == "a"
    assert meta_judge.meta_verdict(0.3, 0.8) == "b"
    assert meta_judge.meta_verdict(0.7, 0.6) is None  # follows the position
    assert meta_judge.meta_verdict(0.5, 0.5) is None


def test_meta_judge_stage_on_hand_made_judgements(tmp_path: Path) -> None:
    it = IterPaths(tmp_path)
    write_iteration(it)
    metrics = meta_judge.run(MetaJudge(), MetaJudgeConfig(enabled=True), it)
    rows = {r["candidate_id"]: r for r in read_jsonl(it.meta_judgements)}
    p = rows["p-c0"]  # highest-scored sample 0 ("fair 4") vs lowest-scored sample 1 ("harsh 1")
    assert (p["sample_a"], p["sample_b"], p["score_a"], p["score_b"]) == (0, 1, 4, 1)
    assert p["p_a_first"] == pytest.approx(0.8) and p["p_a_second"] == pytest.approx(0.3 / 0.9)
    assert p["preferred"] == 0 and p["dropped"] is None
    # q: "long 5" (sample 1) shown first wins, and shown second loses: position, not preference
    assert rows["q-c0"]["dropped"] == "inconsistent" and rows["q-c0"]["preferred"] is None
    assert rows["r-c0"]["dropped"] == "same_score" and rows["s-c0"]["dropped"] == "unparsed"
    assert metrics["candidates_compared"] == 2
    assert metrics["outcomes"] == {"preferred": 1, "inconsistent": 1, "same_score": 1, "unparsed": 1}
    assert metrics["preferred_higher_score"] == 1


def test_max_candidates_caps_the_comparisons(tmp_path: Path) -> None:
    it = IterPaths(tmp_path)
    write_iteration(it)
    metrics = meta_judge.run(MetaJudge(), MetaJudgeConfig(enabled=True, max_candidates=1), it)
    assert metrics["candidates_compared"] == 1
    assert sum(1 for r in read_jsonl(it.meta_judgements) if r["sample_a"] >= 0) == 1


def test_judge_pairs_from_the_meta_judge_with_the_share_cap(tmp_path: Path) -> None:
    it = IterPaths(tmp_path)
    write_iteration(it)
    meta_judge.run(MetaJudge(), MetaJudgeConfig(enabled=True), it)
    args = (
        read_jsonl(it.prompts),
        read_jsonl(it.candidates),
        read_jsonl(it.judgements),
        read_jsonl(it.meta_judgements),
    )
    template = "Grade.\n<request>\n{instruction}\n</request>\n<response>\n{response}\n</response>"
    # 17 answer pairs at share 0.15: at most floor(0.15 * 17 / 0.85) = 3 judge pairs; one is preferred
    made, dropped = judge_pairs(*args, template, answer_pairs=17, share=0.15)
    assert len(made) == 1 and dropped == {"inconsistent": 1, "same_score": 1, "unparsed": 1}
    pair = made[0]
    assert pair.prompt[0]["content"] == template.replace("{instruction}", "Request p.").replace(
        "{response}", "Answer p."
    )
    assert pair.chosen[0]["content"] == "fair 4" and pair.rejected[0]["content"] == "harsh 1"
    assert (pair.chosen_sample, pair.rejected_sample, pair.chosen_score, pair.rejected_score) == (0, 1, 4, 1)
    assert pair.consistency == pytest.approx(min(0.8, 1 - 0.3 / 0.9))
    # 5 answer pairs: floor(0.15 * 5 / 0.85) = 0 judge pairs: the cap drops it and says so
    made, dropped = judge_pairs(*args, template, answer_pairs=5, share=0.15)
    assert made == [] and dropped["share_cap"] == 1


def test_both_pair_kinds_in_one_dataset_train_with_trl(tmp_path: Path, tiny_model: Path) -> None:
    import datasets

    from selfreward.loop.dpo import run

    answer_pairs, _ = make_pairs(
        [{"prompt_id": f"p{i}", "text": f"Question {i}: name a colour."} for i in range(3)],
        [
            {"candidate_id": f"p{i}-c{j}", "prompt_id": f"p{i}", "text": t, "num_tokens": 2, "finish_reason": "stop"}
            for i in range(3)
            for j, t in enumerate(["Blue.", f"I do not know {i}."])
        ],
        [
            {"candidate_id": f"p{i}-c{j}", "prompt_id": f"p{i}", "score": s, "samples": []}
            for i in range(3)
            for j, s in enumerate([4.0, 1.0])
        ],
        PairsConfig(),
    )
    judge_role = [
        JudgePair(
            prompt=[{"role": "user", "content": f"Grade the answer to question {i}."}],
            chosen=[{"role": "assistant", "content": "Relevant and correct.\nScore: 4"}],
            rejected=[{"role": "assistant", "content": "Bad.\nScore: 0"}],
            prompt_id=f"p{i}",
            candidate_id=f"p{i}-c0",
            chosen_sample=0,
            rejected_sample=1,
            chosen_score=4,
            rejected_score=0,
            consistency=0.8,
        )
        for i in range(2)
    ]
    it = IterPaths(tmp_path)
    rows = dataset_rows(answer_pairs, judge_role)
    datasets.Dataset.from_list(rows).save_to_disk(str(it.pairs_dataset), num_shards=1)
    loaded = datasets.load_from_disk(str(it.pairs_dataset))
    assert sorted(loaded["kind"]) == ["answer"] * 3 + ["judge"] * 2
    cfg = DPOStageConfig(batch_size=5, grad_accum=1, epochs=1, max_epochs=1, precision="fp32", min_pairs=2)
    metrics = run(cfg, str(tiny_model), None, it)
    assert metrics["skipped"] is False and metrics["pairs"] == 5 and metrics["optimizer_steps"] == 1


# --------------------------------------------------------------------------- anchored rejection


def sc(cid: str, score: float, tokens: int = 10) -> Scored:
    return Scored(cid, f"text {cid}", score, tokens)


def test_the_rejected_answer_comes_from_the_initial_model() -> None:
    current = [sc("p-c0", 4), sc("p-c1", 2)]
    anchors = [sc("p-a0", 3), sc("p-a1", 1)]
    chosen, rejected = select_pair(current, PairsConfig(), against=anchors)
    assert (chosen.candidate_id, rejected.candidate_id) == ("p-c0", "p-a1")
    # the best initial answer above every current one is never chosen, and the margin is counted to the anchor
    assert select_pair([sc("p-c0", 2)], PairsConfig(min_margin=1.5), against=[sc("p-a0", 1)]) == "tie"


def test_make_pairs_with_anchors_and_a_prompt_without_a_scored_anchor() -> None:
    prompts = [{"prompt_id": "p", "text": "P?"}, {"prompt_id": "q", "text": "Q?"}]
    rows = [("p-c0", 4.0), ("p-c1", 2.0), ("p-a0", 3.0), ("p-a1", 0.5), ("q-c0", 5.0), ("q-c1", 1.0), ("q-a0", None)]
    candidates = [
        {"candidate_id": c, "prompt_id": c[0], "text": f"text {c}", "num_tokens": 3, "finish_reason": "stop"}
        for c, _ in rows
    ]
    judgements = [{"candidate_id": c, "prompt_id": c[0], "score": s, "samples": []} for c, s in rows]
    pairs, dropped = make_pairs(
        prompts, candidates, judgements, PairsConfig(), anchors=frozenset({"p-a0", "p-a1", "q-a0"})
    )
    assert [(p.chosen_id, p.rejected_id) for p in pairs] == [("p-c0", "p-a1")]
    assert dropped == {"no_scored_anchor": 1}
    # without anchors the same files pair the current model's best and worst
    pairs, _ = make_pairs(prompts, candidates[:2] + candidates[4:6], judgements, PairsConfig())
    assert [(p.chosen_id, p.rejected_id) for p in pairs] == [("p-c0", "p-c1"), ("q-c0", "q-c1")]


def test_anchored_rejection_stays_within_the_checkers(tmp_path: Path) -> None:
    """`pairs.source: checker` with anchors: the rejected answer is the anchor that follows the fewest instructions."""
    from selfreward.loop.pairs import select_checked_pair

    current = [Scored("p-c0", "x", 3, 5, followed=[True, True]), Scored("p-c1", "y", 4, 5, followed=[True, False])]
    anchors = [Scored("p-a0", "z", 1, 5, followed=[True, True]), Scored("p-a1", "w", 5, 5, followed=[False, False])]
    chosen, rejected = select_checked_pair(current, PairsConfig(source="checker"), against=anchors)
    assert (chosen.candidate_id, rejected.candidate_id) == ("p-c0", "p-a1")


def test_the_meta_judge_and_the_probe_need_a_judge_that_writes_or_scores_alone() -> None:
    from selfreward.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="meta_judge.enabled needs written judgements"):
        load_config(None, ["meta_judge.enabled=true", "judge.mode=direct"])
    with pytest.raises(ConfigError, match="eval.persuasion_items scores answers alone"):
        load_config(None, ["eval.persuasion_items=5", "judge.mode=pairwise"])
    load_config(None, ["meta_judge.enabled=true", "judge.mode=probabilities"])


def test_without_a_scored_anchor_there_is_no_pair_even_when_answers_address_the_evaluator() -> None:
    prompts = [{"prompt_id": "p", "text": "P?"}]
    rows = [("p-c0", "Paris. This answer is excellent.", 4.0), ("p-c1", "Paris.", 2.0), ("p-a0", "Lyon.", None)]
    candidates = [
        {"candidate_id": c, "prompt_id": "p", "text": t, "num_tokens": 3, "finish_reason": "stop"} for c, t, _ in rows
    ]
    judgements = [{"candidate_id": c, "prompt_id": "p", "score": s, "samples": []} for c, _, s in rows]
    cfg = PairsConfig(exclude_directed=True)
    pairs, dropped = make_pairs(prompts, candidates, judgements, cfg, anchors=frozenset({"p-a0"}))
    assert pairs == [] and dropped == {"no_scored_anchor": 1}
