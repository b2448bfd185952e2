"""The pairwise judge mode: per-candidate scores by hand from given next-token probabilities of A and B, in both
orders, through the judge stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfreward.artifacts import IterPaths, read_jsonl, write_jsonl
from selfreward.config import ConfigError, JudgeConfig
from selfreward.loop import judge
from selfreward.loop.pairs import score_se
from tests.test_judge import Parrot

# the probabilities the fake judge gives to " A" and " B" for (answer shown as A, answer shown as B)
RAW = {
    ("good", "bad"): [0.9, 0.1],
    ("bad", "good"): [0.2, 0.6],  # mass 0.8: renormalised to 0.25 / 0.75
    ("good", "ok"): [0.7, 0.3],
    ("ok", "good"): [0.5, 0.5],
    ("ok", "bad"): [0.6, 0.4],
    ("bad", "ok"): [0.3, 0.7],
}


class LetterJudge(Parrot):
    """P(" A"), P(" B") from `RAW` by the two texts shown in the prompt's `<TAG A>` and `<TAG B>` sections."""

    TAG = "response"
    RAW = RAW

    def encode(self, text: str) -> list[int]:  # " A" and " B" are one token each, as in real tokenizers
        return [ord(c) for c in text.replace(" A", "A").replace(" B", "B")]

    def token_probs(self, prompts: list[str], token_ids: list[int]) -> list[list[float]]:
        assert token_ids == [ord("A"), ord("B")]
        out = []
        for p in prompts:
            a = p.split(f"<{self.TAG} A>\n", 1)[1].split(f"\n</{self.TAG} A>", 1)[0]
            b = p.split(f"<{self.TAG} B>\n", 1)[1].split(f"\n</{self.TAG} B>", 1)[0]
            out.append(self.RAW[(a, b)])
        return out


def test_pairwise_scores_by_hand_from_both_orders(tmp_path: Path) -> None:
    it = IterPaths(tmp_path)
    write_jsonl(it.prompts, [{"prompt_id": "p", "text": "Say something.", "source": "test"}])
    write_jsonl(
        it.candidates,
        [
            {"candidate_id": f"p-c{i}", "prompt_id": "p", "text": t, "num_tokens": 1, "finish_reason": "stop"}
            for i, t in enumerate(["good", "bad", "ok"])
        ],
    )
    metrics = judge.run(LetterJudge(), JudgeConfig(mode="pairwise", min_digit_mass=0.5), it)
    rows = {r["candidate_id"]: r for r in read_jsonl(it.judgements)}
    # good: as A vs bad 0.9, as B vs bad 0.6/0.8 = 0.75, as A vs ok 0.7, as B vs ok 0.5 -> 5 * 0.7125
    assert rows["p-c0"]["score"] == pytest.approx(5 * (0.9 + 0.75 + 0.7 + 0.5) / 4)
    # bad: 0.25, 0.1, 0.3, 0.4; ok: 0.5, 0.3, 0.6, 0.7
    assert rows["p-c1"]["score"] == pytest.approx(5 * (0.25 + 0.1 + 0.3 + 0.4) / 4)
    assert rows["p-c2"]["score"] == pytest.approx(5 * (0.5 + 0.3 + 0.6 + 0.7) / 4)
    good = rows["p-c0"]["samples"]
    assert [s["text"] for s in good] == ["vs 1 as A", "vs 1 as B", "vs 2 as A", "vs 2 as B"]
    assert good[1]["digit_mass"] == pytest.approx(0.8) and good[1]["probs"] == pytest.approx([0.25, 0.75])
    # the noise band the pairs stage uses: the spread of the four comparisons
    assert score_se(good) > 0
    assert metrics["candidates_judged"] == 3 and metrics["unscored_candidates"] == 0


def test_a_comparison_with_too_little_mass_on_the_letters_is_unscored(tmp_path: Path) -> None:
    sample = judge.pairwise_sample("vs 1 as A", [0.2, 0.1], True, min_mass=0.5)
    assert sample.score is None and sample.error == "low_digit_mass"
    assert judge.pairwise_sample("vs 1 as B", None, False, 0.5).error == "too_long"
    assert judge.pairwise_sample("vs 1 as B", [0.3, 0.6], False, 0.5).score == pytest.approx(5 * 2 / 3)


def test_pairwise_is_refused_where_answers_are_judged_alone() -> None:
    with pytest.raises(ConfigError, match="pairwise"):
        judge.judge_texts(LetterJudge(), JudgeConfig(mode="pairwise"), [("q", "a")])
