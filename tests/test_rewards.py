"""Reward sources: the judge reward through the loop's judge code path; a reward model trained with TRL's
RewardTrainer on the tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from selfreward.artifacts import DataError, read_jsonl
from selfreward.baselines.rewards import JudgeReward, ModelReward, RewardFunction, VerifierReward, train_reward_model
from selfreward.config import EngineConfig, JudgeConfig, PPOConfig
from selfreward.generation import Completion, Generator, SamplingSpec


class ScriptedJudge(Generator):
    """A judge whose outputs depend on which answer it is shown: A -> `Score: 4` twice; B -> `Score: 5` and an
    unparseable text; C -> nothing parseable."""

    engine_name = "scripted"

    def _complete(self, prompts: list[str], spec: SamplingSpec) -> list[list[Completion]]:
        out = []
        for p in prompts:
            if "answer A" in p:
                texts = ["Good. Score: 4", "Score: 4"]
            elif "answer B" in p:
                texts = ["Score: 5", "excellent"]
            else:
                texts = ["hmm", "no idea"]
            out.append([Completion(t, 3, "stop") for t in texts[: spec.n]])
        return out


def test_judge_reward_maps_scores_and_penalises_unscored(tiny_model: Path) -> None:
    """A: mean 4 -> (4 - 2.5) / 2.5 = 0.6; B: only `Score: 5` parses -> 1.0; C: none parses -> penalty -0.7."""
    gen = ScriptedJudge(str(tiny_model), EngineConfig())
    reward = JudgeReward(gen, JudgeConfig(mode="sampled", samples=2), unscored_penalty=-0.7)
    rewards = reward(["q1", "q2", "q3"], ["answer A", "answer B", "answer C"])
    assert rewards == pytest.approx([0.6, 1.0, -0.7])
    assert reward.unscored == 1
    custom = JudgeReward(gen, JudgeConfig(mode="sampled", samples=2), center=0.0, scale=5.0)
    assert custom(["q"], ["answer A"]) == pytest.approx([0.8])
    assert custom.unscored == 0


def make_pairs(path: Path, n: int) -> None:
    import datasets

    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}: name a colour."}],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": f"I do not know, sorry, question {i} is hard."}],
            "margin": 3.0,
        }
        for i in range(n)
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(path))


def test_reward_model_learns_pairs_and_scores(tmp_path: Path, tiny_model: Path) -> None:
    make_pairs(tmp_path / "pairs", 4)
    cfg = PPOConfig(rm_learning_rate=1e-3, rm_epochs=4, rm_batch_size=2, rm_max_length=128, precision="fp32")
    out, log_path = tmp_path / "rm", tmp_path / "rm_log.jsonl"
    metrics = train_reward_model(cfg, str(tiny_model), tmp_path / "pairs", out, log_path)
    assert metrics["pairs"] == metrics["pairs_used"] == 4 and metrics["steps"] == 8
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert any("loss" in row and "accuracy" in row for row in read_jsonl(log_path))
    reward = ModelReward(out, max_length=128, precision="fp32")
    prompts = ["Question 1: name a colour.", "Question 2: name a colour."]
    chosen = reward(prompts, ["Blue.", "Blue."])
    rejected = reward(
        prompts, ["I do not know, sorry, question 1 is hard.", "I do not know, sorry, question 2 is hard."]
    )
    assert all(math.isfinite(r) for r in chosen + rejected)
    assert all(c > r for c, r in zip(chosen, rejected, strict=True)), (chosen, rejected)
    # Scoring one at a time gives the same numbers as a padded batch.
    assert reward(prompts[:1], ["Blue."]) == pytest.approx(chosen[:1], abs=1e-4)
    # Batches are grouped by length, and the scores still come back in the caller's order.
    mixed = ["Blue.", "I do not know, sorry, question 1 is hard.", "Red, or perhaps a deep shade of blue.", "No."]
    alone = [reward(prompts[:1], [r])[0] for r in mixed]
    reward.batch_size = 2
    assert reward(prompts[:1] * 4, mixed) == pytest.approx(alone, abs=1e-4)
    assert reward(prompts[:1] * 4, mixed[::-1]) == pytest.approx(alone[::-1], abs=1e-4)
    # In bf16 (the default where it is native) the model still prefers what it was trained to prefer.
    half = ModelReward(out, max_length=128, precision="bf16")
    assert all(c > r for c, r in zip(half(prompts, ["Blue."] * 2), rejected, strict=True))


def test_reward_model_without_pairs_is_a_data_error(tmp_path: Path, tiny_model: Path) -> None:
    with pytest.raises(DataError, match="not a pairs dataset"):
        train_reward_model(PPOConfig(), str(tiny_model), tmp_path / "nothing", tmp_path / "rm", tmp_path / "log")


def test_verifier_reward_is_one_for_the_reference_answer_and_records_every_verdict() -> None:
    refs = {"What is 2 + 3?": ("p1", "5"), "What is 10 / 4?": ("p2", "2.5")}
    reward = VerifierReward(refs)
    prompts = ["What is 2 + 3?", "What is 2 + 3?", "What is 10 / 4?", "What is 10 / 4?"]
    responses = ["2 + 3 = 5\n#### 5", "#### 6", "It is 5/2.", "I cannot say."]
    assert reward(prompts, responses) == [1.0, 0.0, 1.0, 0.0]
    assert [(r["problem_id"], r["index"], r["correct"]) for r in reward.rows] == [
        ("p1", 0, True),
        ("p1", 1, False),
        ("p2", 0, True),
        ("p2", 1, False),
    ]
    assert reward.rows[3]["predicted"] is None and reward.rows[3]["reason"]  # unreadable: incorrect, with why
    with pytest.raises(ValueError, match="no reference answer"):
        reward(["What is 1 + 1?"], ["#### 2"])


def test_verifier_reward_with_a_reward_model_returns_its_scores_and_still_verifies() -> None:
    class Length(RewardFunction):
        def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
            return [float(len(r)) for r in responses]

    reward = VerifierReward({"q": ("p", "5")}, Length())
    assert reward(["q", "q"], ["#### 5", "#### 55"]) == [6.0, 7.0]
    assert [r["correct"] for r in reward.rows] == [True, False]
