"""Methods on problems with checkable answers: each method's training data by hand, and every method end to
end on the tiny model (`selfreward reason`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfreward.baselines.reason import (
    CORRECT,
    INCORRECT,
    INIT_STAGES,
    METHODS,
    continued_examples,
    expert_examples,
    judge_pairs,
    orm_pairs,
    rcrl_examples,
    reason,
    solution_examples,
    stages_of,
    user_turn,
    verifier_pairs,
)
from selfreward.config import ConfigError, load_config
from selfreward.reason.problems import Problem

ROOT = Path(__file__).resolve().parent.parent
P = [Problem("p1", "1 + 1?", "2", "1 + 1 = 2\n#### 2", "generated"), Problem("p2", "2 * 3?", "6", "", "generated")]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def refused(tmp_path: Path, tiny_model: Path, overrides: list[str], match: str) -> None:
    """`reason` on the tiny config with `overrides`: a ConfigError matching `match`, before any run folder."""
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"model={tiny_model}", f"output_dir={tmp_path}", *overrides])
    with pytest.raises(ConfigError, match=match):
        reason(cfg)
    assert not (tmp_path / "tiny").exists()


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


def test_expert_iteration_starts_from_the_demonstrations() -> None:
    demo = [
        {"messages": [{"role": "user", "content": user_turn(P[0])}, {"role": "assistant", "content": "1 + 1 = 2"}]}
    ]
    examples = expert_examples(P, [[s("p1", "2", True), s("p2", "5", False)]], demo)
    assert examples[0] == demo[0] and [e["messages"][1]["content"] for e in examples] == ["1 + 1 = 2", "2"]


def test_continued_expert_iteration_keeps_one_correct_ended_sample_per_problem_of_this_round() -> None:
    samples = [s("p1", "3", False), s("p1", "2", True), s("p1", "so 2", True), s("p2", "6", True, cut=True)]
    examples = continued_examples(P, samples)
    assert [(e["messages"][0]["content"], e["messages"][1]["content"]) for e in examples] == [(user_turn(P[0]), "2")]


def test_orm_pairs_every_right_with_every_wrong_answer_and_the_worked_solution_as_one_more_right() -> None:
    samples = [s("p1", "3", False), s("p1", "2", True), s("p1", "4", False), s("p2", "7", False)]
    pairs = [
        (x["prompt"][0]["content"], x["chosen"][0]["content"], x["rejected"][0]["content"])
        for x in orm_pairs(P, samples)
    ]
    u1 = user_turn(P[0])
    # p1: right answers "2" then the solution, wrong "3" and "4": 4 pairs, at most 3 (its number of samples)
    assert pairs == [(u1, "2", "3"), (u1, "2", "4"), (u1, P[0].solution, "3")]
    # p2 has no worked solution and no right answer: no pair; a cut-off right answer is no right answer
    assert orm_pairs(P, [s("p2", "6", True, cut=True), s("p2", "7", False)]) == []


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
    overrides += [f"reason.methods=[{','.join(METHODS)}]"]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    run = reason(cfg)
    rows = json.loads((run.reason / "reason.json").read_text())["rows"]
    assert [(r["method"], r["round"]) for r in rows] == [("start", 0)] + [(m, k) for m in METHODS for k in (1, 2)]
    for r in rows:
        assert 0 <= r["maj@1"]["value"] <= 1 and 0 <= r["pass@2"]["value"] <= 1 and r["answers"] == 4 * 3
        assert "rerank@2" in r and "rerank@2_orm" in r and "orm_accuracy" in r
        assert r["round_wall_s"] >= r["wall_s"] > 0 and r["round_peak_rss_gib"] >= r["peak_rss_gib"] > 0

    # the gain is the paired difference of greedy correctness against the start's, problem by problem
    def greedy(folder: Path) -> dict[str, bool]:
        return {r["problem_id"]: r["correct"] for r in jsonl(folder / "eval.jsonl") if r["greedy"]}

    start = greedy(run.reason / "init")
    assert rows[0]["maj@1_gain"] is None
    for r in rows[1:]:
        after = greedy(run.reason / r["method"] / f"round_{r['round']}")
        expected = sum(after[p] - start[p] for p in start) / len(start)
        assert r["maj@1_gain"]["value"] == pytest.approx(expected) and r["maj@1_gain"]["n"] == 4
    train = [json.loads(x) for x in (run.reason / "problems_train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (run.reason / "problems_test.jsonl").read_text().splitlines()]
    assert not {t["prompt"] for t in train} & {t["prompt"] for t in test}
    init = run.reason / "init"
    assert (init / "model" / "model.safetensors").exists() and (init / "orm" / "model" / "model.safetensors").exists()
    # the tiny model solves nothing: the ORM learnt worked solution vs wrong answer, one pair per sample
    assert len((init / "orm" / "pairs.jsonl").read_text().splitlines()) == 6 * 2
    assert all("orm_score" in json.loads(x) for x in (init / "eval.jsonl").read_text().splitlines()[4:])
    for m in METHODS:
        assert (run.reason / m / "round_2" / "model" / "config.json").exists()
    # PPO: `samples` rollouts per training problem per round, each verified; its log has every update
    rollouts = [
        json.loads(x) for x in (run.reason / "ppo_orm" / "round_1" / "candidates.jsonl").read_text().splitlines()
    ]
    assert len(rollouts) == 6 * 2 and {r["problem_id"] for r in rollouts} == {t["problem_id"] for t in train}
    assert len((run.reason / "ppo_verifier" / "round_2" / "ppo_log.jsonl").read_text().splitlines()) == 3
    # expert iteration: the worked solutions plus the correct samples, from M0
    ei = [
        json.loads(x)
        for x in (run.reason / "expert_iteration" / "round_2" / "sft_data.jsonl").read_text().splitlines()
    ]
    assert [e["messages"][1]["content"] for e in ei[:6]] == [t["solution"] for t in train]
    # its control: as many examples as expert iteration's round, every one a worked solution
    for k in (1, 2):
        ei_k = jsonl(run.reason / "expert_iteration" / f"round_{k}" / "sft_data.jsonl")
        control = jsonl(run.reason / "sft_solutions" / f"round_{k}" / "sft_data.jsonl")
        assert len(control) == len(ei_k) and {c["messages"][1]["content"] for c in control} <= {
            t["solution"] for t in train
        }
    # a re-run finds every stage done: no marker of any method, round or the init (ORM included) is rewritten
    markers = sorted(run.reason.glob("**/.stages/*.json"))
    assert len(markers) == len(INIT_STAGES) + 2 * sum(len(stages_of(m)) for m in METHODS)
    before = {m: m.stat().st_mtime_ns for m in markers}
    reason(cfg)
    assert {m: m.stat().st_mtime_ns for m in markers} == before


def test_the_solutions_control_repeats_the_worked_solutions_to_the_count_asked() -> None:
    demos = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in (1, 2)
    ]
    assert [d["messages"][1]["content"] for d in solution_examples(demos, 5)] == ["a1", "a2", "a1", "a2", "a1"]
    assert solution_examples([], 3) == []


@pytest.mark.parametrize(
    ("methods", "extra"),
    [
        ("[sft_solutions]", []),
        ("[sft_solutions,expert_iteration]", []),
        ("[expert_iteration,sft_solutions]", ["reason.sft_init=false"]),
    ],
)
def test_the_solutions_control_needs_expert_iteration_before_it_and_the_solutions(
    tmp_path: Path, tiny_model: Path, methods: str, extra: list[str]
) -> None:
    refused(tmp_path, tiny_model, [f"reason.methods={methods}", *extra], "sft_solutions")


def test_the_reward_model_batch_must_divide_among_the_processes(tmp_path: Path, tiny_model: Path) -> None:
    refused(tmp_path, tiny_model, ["launch.num_processes=3", "ppo.rm_batch_size=4"], "rm_batch_size")


def test_ppo_orm_without_the_orm_is_a_config_error(tmp_path: Path, tiny_model: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [f"model={tiny_model}", f"output_dir={tmp_path}", "reason.methods=[ppo_orm]", "reason.orm=false"],
    )
    with pytest.raises(ConfigError, match="ppo_orm"):
        reason(cfg)


def test_each_round_continues_from_the_last_and_a_stale_orm_is_not_used(tmp_path: Path, tiny_model: Path) -> None:
    from selfreward.artifacts import RunPaths
    from selfreward.baselines.reason import round_model, starting_point

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"model={tiny_model}", f"output_dir={tmp_path}"])
    run = RunPaths(tmp_path / "r")
    s0 = starting_point(cfg, run, P)
    assert s0.start == str(run.reason / "init" / "model") and s0.base == str(tiny_model)
    assert [d["messages"][1]["content"] for d in s0.demonstrations] == [P[0].solution]  # p2 has none
    assert s0.orm is None  # no ORM trained yet
    (run.reason / "init" / "orm" / "model").mkdir(parents=True)
    (run.reason / "init" / "orm" / "model" / "config.json").write_text("{}")
    assert starting_point(cfg, run, P).orm == run.reason / "init" / "orm" / "model"
    no_orm = load_config(ROOT / "configs" / "tiny.yaml", [f"model={tiny_model}", "reason.orm=false"])
    assert starting_point(no_orm, run, P).orm is None
    assert round_model(run, "rcrl", 1, s0) == s0.start
    assert round_model(run, "rcrl", 3, s0) == str(run.reason / "rcrl" / "round_2" / "model")


def test_ppo_budget_must_divide_into_rollout_batches(tmp_path: Path, tiny_model: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [f"model={tiny_model}", f"output_dir={tmp_path}", "reason.methods=[ppo_verifier]"]
        + ["reason.train_problems=5", "reason.samples=3"],
    )  # 5 problems x 3 samples = 15, rollouts of 4
    with pytest.raises(ConfigError, match="rollout_batch_size"):
        reason(cfg)
