"""Methods on problems with checkable answers: each method's training data by hand, and every method end to
end on the tiny model (`selfreward reason`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfreward.baselines.reason import (
    CORRECT,
    INCORRECT,
    expert_examples,
    judge_pairs,
    rcrl_examples,
    reason,
    user_turn,
    verifier_pairs,
)
from selfreward.config import ConfigError, load_config
from selfreward.reasoning.problems import Problem

ROOT = Path(__file__).resolve().parent.parent
P = [Problem("p1", "1 + 1?", "2", "1 + 1 = 2\n#### 2", "generated"), Problem("p2", "2 * 3?", "6", "", "generated")]


def s(pid: str, text: str, correct: bool, score: float | None = None, cut: bool = False) -> dict:
    return {
        "problem_id": pid,
        "index": 0,
        "text": text,
        "correct": correct,
        "finish_reason": "length" if cut else "stop",
        "judge_score": score,
    }


def test_expert_iteration_keeps_every_correct_sample_once_over_rounds() -> None:
    round1 = [s("p1", "2", True), s("p1", "3", False), s("p2", "6", True), s("p2", "6 ", True)]
    round2 = [s("p1", " 2", True), s("p1", "so 2", True), s("p2", "7", False), s("p2", "6 and on", True, cut=True)]
    examples = expert_examples(P, [round1, round2])
    texts = [(e["messages"][0]["content"], e["messages"][1]["content"]) for e in examples]
    # de-duplicated by (problem, whitespace-normalised text), accumulated, cut-off answers left out
    assert texts == [(user_turn(P[0]), "2"), (user_turn(P[1]), "6"), (user_turn(P[0]), "so 2")]


def test_return_conditioned_data_carries_the_reward_token() -> None:
    examples = rcrl_examples(P, [[s("p1", "2", True), s("p1", "3", False)], [s("p2", "6", True)]])
    users = [e["messages"][0]["content"] for e in examples]
    assert users[0].startswith(CORRECT) and users[1].startswith(INCORRECT) and users[2].startswith(CORRECT)
    assert all(P[0].prompt in u for u in users[:2])


def test_verifier_and_judge_pairs() -> None:
    samples = [s("p1", "3", False, 4.0), s("p1", "2", True, 1.0), s("p2", "6", True, 3.0), s("p2", "6!", True, 3.0)]
    v = verifier_pairs(P, samples)
    assert len(v) == 1 and v[0]["chosen"][0]["content"] == "2" and v[0]["rejected"][0]["content"] == "3"
    j = judge_pairs(P, samples)  # the judge prefers the wrong answer of p1; p2's scores tie: no pair
    assert len(j) == 1 and j[0]["chosen"][0]["content"] == "3"


def test_unknown_method_is_a_config_error(tmp_path: Path, tiny_model: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml", [f"model={tiny_model}", f"output_dir={tmp_path}", "reason.methods=[ppo]"]
    )
    with pytest.raises(ConfigError, match="reason.methods"):
        reason(cfg)


@pytest.mark.slow
def test_every_method_runs_end_to_end_on_the_tiny_model(tmp_path: Path, tiny_model: Path) -> None:
    overrides = [f"model={tiny_model}", f"output_dir={tmp_path}", "run_name=r", "reason.train_problems=6"]
    overrides += ["reason.test_problems=4", "reason.samples=2", "reason.rounds=2", "reason.max_tokens=16"]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    run = reason(cfg)
    rows = json.loads((run.reason / "reason.json").read_text())["rows"]
    assert [(r["method"], r["round"]) for r in rows] == [("start", 0)] + [
        (m, k) for m in ("expert_iteration", "rcrl", "dpo_verifier", "dpo_judge") for k in (1, 2)
    ]
    for r in rows:
        assert 0 <= r["maj@1"]["value"] <= 1 and 0 <= r["pass@2"]["value"] <= 1 and r["answers"] == 4 * 3
    train = [json.loads(x) for x in (run.reason / "problems_train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (run.reason / "problems_test.jsonl").read_text().splitlines()]
    assert not {t["prompt"] for t in train} & {t["prompt"] for t in test}
    assert (run.reason / "init" / "model" / "model.safetensors").exists()
    for m in ("expert_iteration", "rcrl", "dpo_verifier", "dpo_judge"):
        assert (run.reason / m / "round_2" / "model" / "config.json").exists()
    # a re-run finds every stage done
    before = (run.reason / "rcrl" / "round_2" / "eval.jsonl").stat().st_mtime_ns
    reason(cfg)
    assert (run.reason / "rcrl" / "round_2" / "eval.jsonl").stat().st_mtime_ns == before
