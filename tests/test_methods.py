"""compare-methods reads each method's final model and recorded costs: a tiny DPO run plus a hand-made
PPO folder (whose metrics we know), compared with M0 on three prompts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from selfreward.artifacts import read_jsonl
from selfreward.config import load_config
from selfreward.evaluation.methods import compare_methods
from selfreward.loop.pipeline import iterate

ROOT = Path(__file__).resolve().parent.parent


def test_compare_methods_rows_and_costs(tmp_path: Path, tiny_model: Path) -> None:
    prompts = tmp_path / "heldout.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["Say hi.", "Name a fruit.", "Count to 3."]))
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"model={tiny_model}",
            f"output_dir={tmp_path}",
            "run_name=m",
            f"compare.prompts={prompts}",
            "compare.max_tokens=8",
        ],
    )
    run = iterate(cfg, 1)
    shutil.copytree(tiny_model, run.ppo.model)  # a stand-in PPO policy with known recorded costs
    run.ppo.metrics.write_text(
        json.dumps({"wall_s": 12.5, "peak_rss_gib": 1.5, "responses": 8, "steps": 2, "reward": "judge"})
    )
    rows = {r["method"].split(" (")[0]: r for r in compare_methods(cfg, run)}
    assert set(rows) == {"seed SFT", "self-rewarding DPO", "PPO"}
    for r in rows.values():
        assert r["win"] + r["tie"] + r["loss"] == 3 and 0 <= r["win_rate_vs_M0"] <= 1
    dpo, it = rows["self-rewarding DPO"], run.iteration(1)
    metrics = json.loads(it.metrics.read_text())
    assert dpo["answers"] == len(read_jsonl(it.candidates))
    assert dpo["judge_calls"] == metrics["stages"]["judgements"]["judge_samples"] > 0
    assert dpo["wall_s"] == round(sum(s["wall_s"] for s in metrics["stages"].values()), 1)
    assert dpo["model"] == str(it.model)
    ppo = rows["PPO"]
    assert (ppo["wall_s"], ppo["peak_rss_gib"], ppo["answers"]) == (12.5, 1.5, 8)
    assert ppo["judge_calls"] == 8 * cfg.judge.samples
    saved = json.loads(run.methods.read_text())["rows"]
    assert len(saved) == 3
    compare_methods(cfg, run)  # re-run: rows replaced, not added
    assert len(json.loads(run.methods.read_text())["rows"]) == 3
    # PPO trained again with another budget: the table shows the current run only, not the old row too.
    run.ppo.metrics.write_text(
        json.dumps({"wall_s": 20.0, "peak_rss_gib": 1.5, "responses": 16, "steps": 4, "reward": "judge"})
    )
    compare_methods(cfg, run)
    saved = [r["method"] for r in json.loads(run.methods.read_text())["rows"]]
    assert len(saved) == 3 and "PPO (4 updates)" in saved and "PPO (2 updates)" not in saved
