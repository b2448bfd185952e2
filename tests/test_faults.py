"""Fault test: the real loop on the tiny config killed with SIGKILL at points in different stages, resumed,
and compared with an uninterrupted run: the same rows, markers (config and input digests) and weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfreward.artifacts import RunPaths, read_jsonl
from selfreward.loop.pipeline import SEED_STAGES, STAGES

from .conftest import requires_vllm

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# where to kill: the first moment this path exists (a checkpoint mid-training, a stage's marker while the
# next stage runs)
KILL_AT = {
    "seed SFT after its first checkpoint": "iter_0/checkpoints/sft/checkpoint-1/trainer_state.json",
    "judging (candidates done)": "iter_1/.stages/candidates.json",
    "DPO after its first checkpoint": "iter_1/checkpoints/dpo/checkpoint-1/trainer_state.json",
}
ROWS = ("prompts", "candidates", "judgements", "pairs")


def command(tiny_model: Path, out: Path, *extra: str) -> list[str]:
    overrides = [f"model={tiny_model}", f"output_dir={out}", "run_name=fault", "sft.save_steps=1", "dpo.save_steps=1"]
    overrides += extra
    return [
        sys.executable,
        "-m",
        "selfreward",
        "iterate",
        "--config",
        "configs/tiny.yaml",
        "--iterations",
        "1",
        *overrides,
    ]


def run_to_end(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def run_and_kill(cmd: list[str], run: Path, at: str) -> bool:
    """Start the loop, SIGKILL it (and its process group) once `run/at` exists; False if it finished first."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while proc.poll() is None:
            if complete(run / at):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def complete(path: Path) -> bool:
    """The path exists and, for a JSON file (a checkpoint's trainer_state.json), is fully written."""
    if not path.exists():
        return False
    if path.suffix != ".json":
        return True
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def markers(run: RunPaths) -> dict[str, tuple]:
    out = {}
    for k, names in ((0, SEED_STAGES), (1, STAGES)):
        for name in names:
            m = json.loads(run.iteration(k).marker(name).read_text())
            out[f"iter_{k}/{name}"] = (m["fingerprint"], m.get("inputs"))
    return out


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_runs_killed_in_different_stages_resume_to_the_uninterrupted_result(tmp_path: Path, tiny_model: Path) -> None:
    import torch

    reference = RunPaths(tmp_path / "ref" / "fault")
    run_to_end(command(tiny_model, tmp_path / "ref"))
    expected_rows = {name: read_jsonl(getattr(reference.iteration(1), name)) for name in ROWS}
    killed = 0
    for i, (where, at) in enumerate(KILL_AT.items()):
        out = tmp_path / f"kill{i}"
        run = RunPaths(out / "fault")
        killed += run_and_kill(command(tiny_model, out), run.root, at)
        run_to_end(command(tiny_model, out))  # resume
        for name in ROWS:
            assert read_jsonl(getattr(run.iteration(1), name)) == expected_rows[name], f"{where}: {name} differ"
        assert markers(run) == markers(reference), where
        for k in (0, 1):
            a, b = weights(run.iteration(k).model), weights(reference.iteration(k).model)
            for key in a:
                assert torch.allclose(a[key], b[key], atol=1e-6), f"{where}: iter_{k} {key}"
        if "checkpoint" in at:  # training went on from the checkpoint, not from step 0
            k, stage = (0, "sft") if "sft" in at else (1, "dpo")
            metrics = json.loads(run.iteration(k).metrics.read_text())["stages"][stage]
            assert metrics["resumed_from_step"] >= 1, where  # 1, or 2 when step 2 was saved before the kill
        assert not (run.iteration(0).root / "checkpoints" / "sft").exists()  # removed once the model is saved
        assert not (run.iteration(1).root / "checkpoints" / "dpo").exists()
    assert killed == len(KILL_AT)  # every kill point was reached before the run ended


@requires_vllm
def test_stages_redone_in_a_new_vllm_engine_sample_what_the_uninterrupted_run_did(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Killed once prompts are written: candidates and judging are redone in a fresh vLLM engine, where the
    uninterrupted run made them in the engine that had just generated the prompts (other batches before,
    a warm prefix cache). `engine.reproducible` (the default) makes the rows the same."""
    vllm = ["engine.backend=vllm", "engine.kv_cache_gib=1"]
    reference = RunPaths(tmp_path / "ref" / "fault")
    run_to_end(command(tiny_model, tmp_path / "ref", *vllm))
    run = RunPaths(tmp_path / "kill" / "fault")
    assert run_and_kill(command(tiny_model, tmp_path / "kill", *vllm), run.root, "iter_1/.stages/prompts.json")
    assert not run.iteration(1).judgements.exists()  # killed before judging finished
    run_to_end(command(tiny_model, tmp_path / "kill", *vllm))
    for name in ROWS:
        assert read_jsonl(getattr(run.iteration(1), name)) == read_jsonl(getattr(reference.iteration(1), name)), name
    assert markers(run) == markers(reference)
