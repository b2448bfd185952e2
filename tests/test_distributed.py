"""Training past one process: the DPO stage under `accelerate launch` on 2 CPU processes (gloo), as the loop
starts it (`launch.num_processes: 2`), saves the whole model once, with the effective batch of one process."""

from __future__ import annotations

from pathlib import Path

from selfreward.artifacts import RunPaths
from selfreward.config import load_config
from selfreward.runs import train_in_child, training_command

from .test_dpo import make_pairs

ROOT = Path(__file__).resolve().parent.parent


def test_dpo_on_two_cpu_processes_saves_the_full_model(tmp_path: Path, tiny_model: Path) -> None:
    from safetensors.torch import load_file

    overrides = [f"model={tiny_model}", f"output_dir={tmp_path}", "run_name=dist", "seed_sft=false"]
    overrides += ["launch.num_processes=2", "dpo.grad_accum=2", "dpo.epochs=1", "dpo.max_epochs=1"]
    overrides += ["dpo.learning_rate=1e-2", "dpo.save_steps=0"]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    cmd = training_command(cfg, "selfreward.loop.dpo", ["--iter", "1"])
    assert "accelerate.commands.launch" in cmd and cmd[cmd.index("--num_processes") + 1] == "2" and "--cpu" in cmd
    run = RunPaths(cfg.run_dir)
    it = run.iteration(1)
    make_pairs(it, 8)
    metrics = train_in_child(cfg, run, "selfreward.loop.dpo", ["--iter", "1"])
    # grad_accum 2 over 2 processes: 1 each, effective batch 2 x 1 x 2 = 4 as on one process with accumulation 2
    assert metrics["effective_batch"] == 4 and metrics["optimizer_steps"] == 2
    before, after = load_file(tiny_model / "model.safetensors"), load_file(it.model / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape for k in before)
    assert any(not (before[k] == after[k]).all() for k in before)
    assert (it.model / "README.md").exists() and it.dpo_log.exists()
