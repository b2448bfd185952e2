"""Expert iteration: the best-answer rule by hand, prompt files, and one round on the tiny model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from selfreward.artifacts import DataError, RunPaths, read_jsonl
from selfreward.baselines.expert_iter import ROUND_STAGES, expert_iterate, select_best
from selfreward.cli import main
from selfreward.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_select_best_by_hand() -> None:
    candidates = [
        {"candidate_id": "a-c0", "prompt_id": "a", "text": "x"},
        {"candidate_id": "a-c1", "prompt_id": "a", "text": "y"},
        {"candidate_id": "a-c2", "prompt_id": "a", "text": "z"},
        {"candidate_id": "b-c0", "prompt_id": "b", "text": "u"},
        {"candidate_id": "b-c1", "prompt_id": "b", "text": "v"},
        {"candidate_id": "c-c0", "prompt_id": "c", "text": "w"},
    ]
    judgements = [
        {"candidate_id": "a-c0", "score": 3.5},
        {"candidate_id": "a-c1", "score": 4.5},
        {"candidate_id": "a-c2", "score": 4.5},  # equal to a-c1: the first one stays
        {"candidate_id": "b-c0", "score": 2.0},
        {"candidate_id": "b-c1", "score": None},  # unscored: never chosen
        {"candidate_id": "c-c0", "score": None},
    ]
    kept, counts = select_best(candidates, judgements, threshold=3.0)
    assert [(k["candidate_id"], k["score"]) for k in kept] == [("a-c1", 4.5)]
    assert counts["prompts"] == 3 and counts["prompts_unscored"] == 1 and counts["prompts_below_threshold"] == 1
    assert counts["kept"] == 1
    assert counts["mean_candidate_score"] == pytest.approx((3.5 + 4.5 + 4.5 + 2.0) / 4)
    assert counts["mean_best_score"] == pytest.approx((4.5 + 2.0) / 2) and counts["mean_kept_score"] == 4.5
    kept, counts = select_best(candidates, judgements, threshold=2.0)
    assert [k["candidate_id"] for k in kept] == ["a-c1", "b-c0"]


def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    texts = ["Name a colour.", "Write a haiku about rain.", "What is 2 + 2?", "Give one tip for sleep.", "Say hi."]
    path.write_text("".join(json.dumps({"prompt_id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def test_one_round_on_the_tiny_model(tmp_path: Path, tiny_model: Path, caplog, capsys) -> None:
    from safetensors.torch import load_file

    prompts = prompts_file(tmp_path)
    args = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--prompts", str(prompts)]
    overrides = [f"model={tiny_model}", f"output_dir={tmp_path}", "run_name=ei", "seed_sft=false"]
    assert main(["expert-iter", *args, "--rounds", "1", *overrides]) == 0
    run = RunPaths(tmp_path / "ei")
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run.expert_iter_metrics)
    it = run.expert_round(1)
    assert all(it.marker(s).exists() for s in ROUND_STAGES)
    assert len(read_jsonl(it.prompts)) == 4  # tiny.yaml: expert_iter.max_prompts 4
    assert len(read_jsonl(it.candidates)) == 4 * 2  # expert_iter.samples 2
    kept = read_jsonl(it.sft_data)
    m = json.loads(it.metrics.read_text())
    assert m["stages"]["sft_data"]["kept"] == len(kept) == 4  # threshold 0: every prompt's best answer
    candidates = {c["candidate_id"]: c for c in read_jsonl(it.candidates)}
    for row in kept:
        assert row["messages"][1] == {"role": "assistant", "content": candidates[row["candidate_id"]]["text"]}
    assert m["stages"]["sft"]["skipped"] is False and m["stages"]["sft"]["steps"] == 2
    assert m["wall_s"] > 0 and m["peak_rss_gib"] > 0 and m["start_model"] == str(tiny_model)
    before, after = load_file(tiny_model / "model.safetensors"), load_file(it.model / "model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before)
    summary = json.loads(run.expert_iter_metrics.read_text())
    assert summary["final_model"] == str(it.model) and len(summary["rounds"]) == 1

    cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    with caplog.at_level(logging.INFO, logger="selfreward.runs"):
        expert_iterate(cfg, 1, str(prompts))
    assert "running" not in caplog.text  # a re-run skips the finished round


def test_without_prompts_the_run_needs_iteration_1(tmp_path: Path, tiny_model: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml", [f"model={tiny_model}", f"output_dir={tmp_path}", "seed_sft=false"]
    )
    with pytest.raises(DataError, match="iter_1/prompts.jsonl: no such file"):
        expert_iterate(cfg, 1)
