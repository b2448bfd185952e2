"""Training past one process: the DPO and SFT stages under `accelerate launch` on 2 CPU processes (gloo), as
the loop starts them (`launch.num_processes: 2`), save the whole model once, and equal a one-process run with
the same effective batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfreward.artifacts import RunPaths
from selfreward.config import load_config
from selfreward.loop import sft
from selfreward.runs import train_in_child, training_command

from .test_dpo import make_pairs

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # four child processes (two of them 2-process accelerate launches): ~1-2 min


def config(tmp_path: Path, tiny_model: Path, name: str, processes: int):
    overrides = [f"model={tiny_model}", f"output_dir={tmp_path}", f"run_name={name}", "seed_sft=false"]
    overrides += [f"launch.num_processes={processes}", "dpo.grad_accum=2", "dpo.epochs=1", "dpo.max_epochs=1"]
    overrides += ["dpo.learning_rate=1e-2", "dpo.save_steps=0", "sft.grad_accum=2", "sft.save_steps=0"]
    return load_config(ROOT / "configs" / "tiny.yaml", overrides)


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def assert_close(a: dict, b: dict, atol: float) -> float:
    import torch

    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert all(torch.allclose(a[k], b[k], atol=atol) for k in a), f"largest difference {worst}"
    return worst


@pytest.mark.parametrize("stage", ["dpo", "sft", "dpo-lora"])
def test_two_cpu_processes_save_the_full_model_equal_to_one(tmp_path: Path, tiny_model: Path, stage: str) -> None:
    """`dpo-lora`: the adapter is saved by the trainer (gathered) and merged into the base weights after."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stage, lora = stage.removesuffix("-lora"), stage.endswith("-lora")
    module, args = f"selfreward.loop.{stage}", (["--iter", "1"] if stage == "dpo" else [])
    models = {}
    metrics = {}
    for processes in (2, 1):
        cfg = config(tmp_path, tiny_model, f"p{processes}", processes)
        cfg.dpo.lora = lora
        run = RunPaths(cfg.run_dir)
        if processes == 2:
            cmd = training_command(cfg, module, args)
            assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"] and cmd[5] == "2"
        if stage == "dpo":
            make_pairs(run.iteration(1), 8)
            it = run.iteration(1)
        else:
            it = run.iteration(0)
            sft.write_data(cfg.seed_data, cfg.judge, cfg.sft, it, cfg.seed)
        metrics[processes] = train_in_child(cfg, run, module, args)
        models[processes] = it.model
    assert metrics[2]["processes"] == 2 and metrics[1]["processes"] == 1  # really two processes (gloo)
    assert metrics[2]["distributed_type"] == "MULTI_CPU"
    if stage == "dpo":  # accumulation 2 on 1 process = 1 per process on 2: batch 2 x 1 x 2 = 4 either way
        assert metrics[2]["effective_batch"] == metrics[1]["effective_batch"] == 4
        assert metrics[2]["optimizer_steps"] == metrics[1]["optimizer_steps"] == 2
    else:
        assert metrics[2]["steps"] == metrics[1]["steps"] == 2
    two, one = weights(models[2]), weights(models[1])
    assert two.keys() == weights(tiny_model).keys()  # merged: the base model's tensors, no adapter left
    assert not list(models[2].parent.glob(".adapter-*"))
    assert any(not (two[k] == weights(tiny_model)[k]).all() for k in two)  # it trained
    worst = assert_close(two, one, atol=1e-4)
    print(f"{stage}{' (LoRA)' if lora else ''}: largest |2-process - 1-process| weight difference {worst:.2e}")
    model = AutoModelForCausalLM.from_pretrained(models[2], use_safetensors=True)  # it loads and generates
    tok = AutoTokenizer.from_pretrained(models[2])
    out = model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 1
