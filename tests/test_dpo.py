"""The DPO stage on the tiny model: every parameter changes, losses are logged."""

from __future__ import annotations

import json
from pathlib import Path

from selfreward.artifacts import IterPaths, read_jsonl
from selfreward.config import DPOStageConfig
from selfreward.loop.dpo import run
from selfreward.loop.pairs import _empty_dataset


def make_pairs(it: IterPaths, n: int) -> None:
    import datasets

    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}: name a colour."}],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": f"I do not know {i}."}],
        }
        for i in range(n)
    ]
    (datasets.Dataset.from_list(rows) if rows else _empty_dataset()).save_to_disk(str(it.pairs_dataset))


def test_dpo_changes_every_parameter_and_logs(tmp_path: Path, tiny_model: Path) -> None:
    from safetensors.torch import load_file

    it = IterPaths(tmp_path)
    make_pairs(it, 4)
    cfg = DPOStageConfig(batch_size=2, grad_accum=1, learning_rate=1e-2, precision="fp32", min_pairs=2, max_length=64)
    metrics = run(cfg, str(tiny_model), None, it)
    assert metrics["skipped"] is False and metrics["steps"] == 2
    before, after = load_file(tiny_model / "model.safetensors"), load_file(it.model / "model.safetensors")
    for name, tensor in before.items():
        if "norm" in name:  # RMSNorm weights start at 1 and can stay there at this lr
            continue
        assert not (tensor == after[name]).all(), f"{name} did not change"
    log = read_jsonl(it.dpo_log)
    assert any("loss" in row and "rewards/margins" in row for row in log)
    assert json.loads((it.model / "config.json").read_text())["torch_dtype" if False else "dtype"] == "float32"


def test_dpo_with_lora_merges_adapter(tmp_path: Path, tiny_model: Path) -> None:
    from safetensors.torch import load_file

    it = IterPaths(tmp_path)
    make_pairs(it, 2)
    cfg = DPOStageConfig(
        batch_size=2, grad_accum=1, learning_rate=1e-2, precision="fp32", min_pairs=2, lora=True, max_length=64
    )
    run(cfg, str(tiny_model), None, it)
    after = load_file(it.model / "model.safetensors")
    assert not any("lora" in k for k in after)  # merged into a plain model
    before = load_file(tiny_model / "model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before)
