"""Run bookkeeping that needs no model: the run lock (`open_run`), removal of an interrupted run's temporaries,
and atomic writes that leave nothing behind and reach the disk."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfreward import artifacts
from selfreward.artifacts import atomic_path, write_json
from selfreward.config import RunConfig, load_config
from selfreward.runs import open_run

ROOT = Path(__file__).resolve().parent.parent

# A second process that opens the same run: prints the UserError and exits 2, or prints "locked" on success.
OPEN_RUN = (
    "import sys\n"
    "from selfreward.config import load_config\n"
    "from selfreward.errors import UserError\n"
    "from selfreward.runs import open_run\n"
    "try:\n"
    "    open_run(load_config(sys.argv[1], sys.argv[2:]))\n"
    "except UserError as e:\n"
    "    print(e)\n"
    "    sys.exit(2)\n"
    "print('locked')\n"
)


def run_config(tmp_path: Path) -> tuple[RunConfig, list[str]]:
    """configs/tiny.yaml with its run under tmp_path and a model folder that resolves without loading."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    overrides = [f"output_dir={tmp_path / 'runs'}", f"model={model}"]
    return load_config(ROOT / "configs" / "tiny.yaml", overrides), overrides


def open_in_child(overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", OPEN_RUN, str(ROOT / "configs" / "tiny.yaml"), *overrides],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_second_process_on_the_same_run_fails_naming_the_pid(tmp_path: Path) -> None:
    cfg, overrides = run_config(tmp_path)
    run = open_run(cfg)
    assert open_run(cfg) == run  # the same process may open its own run again
    assert f"PID {os.getpid()} on " in run.lock.read_text()
    child = open_in_child(overrides)
    assert child.returncode == 2, child.stdout + child.stderr
    message = child.stdout.strip()
    assert "\n" not in message and str(run.lock) in message and f"PID {os.getpid()} " in message


def test_lock_of_a_process_that_ended_is_taken_over(tmp_path: Path) -> None:
    cfg, overrides = run_config(tmp_path)
    child = open_in_child(overrides)  # takes the lock, exits: the kernel frees it
    assert child.returncode == 0 and child.stdout.strip() == "locked", child.stdout + child.stderr
    assert f"PID {os.getpid()} " not in cfg.run_dir.joinpath(".lock").read_text()
    run = open_run(cfg)
    assert run.lock.read_text().startswith(f"PID {os.getpid()} on ")


def test_stale_temporaries_are_removed_at_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg, _ = run_config(tmp_path)
    root = cfg.run_dir
    stale = [
        ".config.yaml.k2j4h5g6",  # atomic_path's temporary folder
        "iter_1/.pairs.jsonl.abcd_123",
        "iter_1/.model.old",  # earlier atomic_path's moved-away folder
        "iter_1/dpo-q1w2e3r4",  # the trainers' scratch folders
        "iter_0/sft-a1b2c3d4",
        "ppo/reward-model-0a1b2c3d",
        "iter_1/.stages/.pairs.json.m4n5b6v7",
    ]
    kept = ["iter_1/model/model.safetensors", "iter_1/.stages/pairs.json", "iter_1/pairs.jsonl", "notes/dpo-x/a"]
    for name in stale:
        (root / name).mkdir(parents=True)
        (root / name / "part").write_text("half written")
    for name in kept:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("kept")
    outside = tmp_path / ".elsewhere.abcdefgh"  # beside the run folder, not in it: never touched
    outside.mkdir()
    with caplog.at_level(logging.INFO, logger="selfreward.runs"):
        open_run(cfg)
    assert not [name for name in stale if (root / name).exists()]
    assert all((root / name).read_text() == "kept" for name in kept)
    assert outside.exists()
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removing ")]
    assert len(removed) == len(stale)


def test_atomic_path_leaves_only_the_target(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"a": 1})
    folder = tmp_path / "model"
    for weights in ("1", "2"):  # the second write replaces a folder
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / "w").write_text(weights)
    assert (folder / "w").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "model"]
    assert artifacts.stale_temps(tmp_path) == []


def test_atomic_path_flushes_the_files_and_the_parent_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(artifacts.os, "fsync", fsync)
    with atomic_path(tmp_path / "model") as tmp:
        tmp.mkdir()
        (tmp / "w").write_text("1")
    assert any(p.endswith("/model/w") for p in synced)  # the file, while still in its temporary folder
    assert synced[-1] == str(tmp_path)  # the parent folder, after the rename


def test_fsdp_on_a_machine_without_a_gpu_is_refused_not_turned_into_ddp() -> None:
    import torch

    from selfreward.config import ConfigError
    from selfreward.launch import launch_env

    cfg = load_config(None, ["launch.fsdp=true", "launch.num_processes=2"])
    if torch.cuda.is_available():
        assert launch_env(cfg)["ACCELERATE_USE_FSDP"] == "true"
    else:
        with pytest.raises(ConfigError, match="launch.fsdp: accelerate enables FSDP on accelerators only"):
            launch_env(cfg)
    assert launch_env(load_config(None, ["launch.num_processes=2"])) == {}
