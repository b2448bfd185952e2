"""Tracking, cards, push and status on one half-finished tiny run (iteration 1 of 2, TensorBoard on)."""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path

import pytest

from selfreward.artifacts import RunPaths, read_jsonl
from selfreward.cli import main
from selfreward.config import load_config
from selfreward.loop.pipeline import STAGES, iterate
from selfreward.runs import eta_s, release_run
from selfreward.tracking import flatten

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model: Path) -> RunPaths:
    tmp = tmp_path_factory.mktemp("eco")
    overrides = [f"model={tiny_model}", f"output_dir={tmp}", "run_name=eco", "iterations=2"]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [*overrides, "tracking.report_to=tensorboard"])
    run = iterate(cfg, 1)  # iteration 2 of 2 is left pending
    release_run(run)  # as when the `selfreward iterate` process has ended
    return run


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_has_the_loop_metrics_at_the_iteration_step(run: RunPaths) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loop = scalars(run.tracking / "loop")
    metrics = json.loads(run.iteration(1).metrics.read_text())["stages"]
    assert loop["pairs/pairs"] == {1: metrics["pairs"]["pairs"]}
    assert loop["prompts/prompts_kept"][1] == metrics["prompts"]["prompts_kept"] == 6
    assert loop["judgements/mean_digit_mass"][1] == pytest.approx(metrics["judgements"]["mean_digit_mass"])
    assert loop["dpo/optimizer_steps"][1] == metrics["dpo"]["optimizer_steps"]
    for reason, n in metrics["prompts"]["rejected_by_reason"].items():
        assert loop[f"prompts/rejected_by_reason/{reason}"][1] == n
    acc = EventAccumulator(str(run.tracking / "loop"))
    acc.Reload()
    assert "judgements/scores" in acc.Tags()["histograms"]


def test_trainers_report_to_tensorboard_under_the_stage_name(run: RunPaths) -> None:
    dpo = scalars(run.tracking / "iter_1" / "dpo")
    sft = scalars(run.tracking / "iter_0" / "sft")
    steps = json.loads(run.iteration(1).metrics.read_text())["stages"]["dpo"]["optimizer_steps"]
    assert len(dpo["train/loss"]) == steps and "train/rewards/accuracies" in dpo
    assert len(sft["train/loss"]) == 2


def test_flatten_keeps_numbers_only() -> None:
    flat = flatten({"a": {"b": 1, "ok": True, "name": "x", "h": [0, 2]}, "c": 0.5, "d": None})
    assert flat == {"a/b": 1.0, "a/h/0": 0.0, "a/h/1": 2.0, "c": 0.5}


def test_model_and_dataset_cards_parse_with_huggingface_hub(run: RunPaths, tiny_model: Path) -> None:
    from huggingface_hub import DatasetCard, ModelCard

    it = run.iteration(1)
    card = ModelCard.load(it.model / "README.md")
    assert "dpo" in card.data.tags and card.data.library_name == "transformers"
    assert card.data.license == "unknown"  # the tiny model's folder has no card to say
    assert str(tiny_model) in card.text and '"beta": 0.1' in card.text and '"pairs_used"' in card.text
    assert "transformers" in card.text and "trl" in card.text  # library versions
    sft = ModelCard.load(run.iteration(0).model / "README.md")
    assert "sft" in sft.data.tags and '"examples": 8' in sft.text
    data = DatasetCard.load(it.pairs_dataset / "README.md")
    assert "preference" in data.data.tags and data.data.configs[0]["data_files"][0]["path"] == "data/train-*"
    template_hash = hashlib.sha256((ROOT / "prompts" / "judge.txt").read_bytes()).hexdigest()
    assert template_hash in data.text
    assert f'"pairs": {len(read_jsonl(it.pairs))}' in data.text and '"noise_z"' in data.text


def test_embedded_model_card_facts() -> None:
    from selfreward.cards import hub_id, model_license

    assert model_license("smollm2-135m-instruct") == "apache-2.0"
    assert hub_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("/no/such/folder/x") is None and hub_id("org/name") == "org/name"


def test_push_dry_run_writes_what_would_be_uploaded(run: RunPaths, tmp_path: Path, capsys) -> None:
    import datasets

    out = tmp_path / "upload"
    assert (
        main(["push", str(run.root), "--iter", "1", "--what", "pairs", "--repo", "me/pairs", "--dry-run", str(out)])
        == 0
    )
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["README.md", "data/train-00000-of-00001.parquet"]
    pushed = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    rows = read_jsonl(run.iteration(1).pairs)
    assert len(pushed) == len(rows) and pushed[0]["chosen"] == rows[0]["chosen"]
    assert (out / "README.md").read_text() == (run.iteration(1).pairs_dataset / "README.md").read_text()

    model_out = tmp_path / "model"
    assert (
        main(["push", str(run.root), "--iter", "1", "--what", "model", "--repo", "me/m", "--dry-run", str(model_out)])
        == 0
    )
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in model_out.iterdir()}
    # again into the same folder, or a real push offline: one line, exit 2, nothing written
    capsys.readouterr()
    assert (
        main(["push", str(run.root), "--iter", "1", "--what", "model", "--repo", "me/m", "--dry-run", str(model_out)])
        == 2
    )
    assert main(["push", str(run.root), "--iter", "1", "--what", "pairs", "--repo", "me/pairs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "exists" in err[0] and "HF_HUB_OFFLINE" in err[1]
    assert (
        main(
            [
                "push",
                str(run.root),
                "--iter",
                "2",
                "--what",
                "pairs",
                "--repo",
                "me/pairs",
                "--dry-run",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "x").exists()


def status_lines(run: RunPaths, capsys) -> list[str]:
    capsys.readouterr()
    assert main(["status", str(run.root)]) == 0
    return capsys.readouterr().out.splitlines()


def test_status_of_a_half_finished_run(run: RunPaths, capsys) -> None:
    lines = status_lines(run, capsys)
    assert lines[0].endswith("not running")
    rows = {tuple(line.split()[:3]) for line in lines[1:]}
    assert ("iter_0", "sft", "done") in rows
    assert {("iter_1", s, "done") for s in STAGES} <= rows
    assert {("iter_2", s, "pending") for s in STAGES} <= rows
    # another process holding the run's lock: the first stage not done is the running one
    with run.lock.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.seek(0)
        f.truncate()
        f.write("PID 4242 on host (selfreward iterate)\n")
        f.flush()
        lines = status_lines(run, capsys)
    assert "in use by PID 4242" in lines[0]
    rows = {tuple(line.split()[:3]) for line in lines[1:]}
    assert ("iter_2", "prompts", "running") in rows and ("iter_2", "candidates", "pending") in rows


def test_progress_line_and_eta(run: RunPaths) -> None:
    """Where iteration 2 of 2 would be at its judging stage: ETA = iteration 1's judging, pairs and DPO times."""
    from selfreward.progress import clock as _clock
    from selfreward.runs import Progress

    times = {n: s["wall_s"] for n, s in json.loads(run.iteration(1).metrics.read_text())["stages"].items()}
    line = Progress("eco", "iteration", 2).line(run.iteration(2), 2, STAGES, "judgements")
    eta = _clock(times["judgements"] + times["pairs"] + times["dpo"])
    assert line.startswith("[eco] iteration 2/2 · stage 3/5 judgements · elapsed 0m0") and line.endswith(f"ETA {eta}")
    assert Progress("eco", "iteration", 2).line(run.iteration(1), 1, STAGES, "prompts").endswith("ETA unknown")
    previous = {"a": 10.0, "b": 20.0}
    assert eta_s(previous, ("a", "b"), 1, 2) == 20 + 2 * 30
    assert eta_s({"a": 10.0}, ("a", "b"), 0, 0) is None
