"""Training past one process: the DPO, SFT, reward-model and PPO stages on 2 CPU processes (gloo), as the loop
starts them (`launch.num_processes: 2`), save the whole model once, and equal a one-process run with the same
effective batch. On the tiny model, so in the suite (each test ~15-30 s: child processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfreward.artifacts import RunPaths
from selfreward.config import load_config
from selfreward.launch import train_in_child, training_command
from selfreward.loop import sft

from .test_dpo import make_pairs

ROOT = Path(__file__).resolve().parent.parent


def config(tmp_path: Path, tiny_model: Path, name: str, processes: int):
    overrides = [f"model={tiny_model}", f"output_dir={tmp_path}", f"run_name={name}", "seed_sft=false"]
    overrides += [f"launch.num_processes={processes}", "dpo.grad_accum=2", "dpo.epochs=1", "dpo.max_epochs=1"]
    overrides += ["dpo.learning_rate=1e-2", "dpo.save_steps=0", "sft.grad_accum=2", "sft.save_steps=0"]
    overrides += ["sft.group_by_length=false"]  # on 2 processes it is left off: the same batches on 1
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


def test_the_reward_model_on_two_cpu_processes_equals_one(tmp_path: Path, tiny_model: Path) -> None:
    """`selfreward reason`'s outcome reward model (RewardTrainer) as its training child, on 2 processes and
    on 1: `ppo.rm_batch_size` is the batch of a step over all processes, so both take the same steps."""
    from selfreward.artifacts import write_jsonl
    from selfreward.baselines.reason import orm_data, problems

    trained = {}
    for processes in (2, 1):
        overrides = [
            f"model={tiny_model}",
            f"output_dir={tmp_path}",
            f"run_name=rm{processes}",
            "reason.sft_init=false",
        ]
        overrides += ["reason.train_problems=4", "reason.test_problems=2", "ppo.rm_batch_size=4", "ppo.rm_epochs=1"]
        overrides += ["ppo.rm_learning_rate=1e-3", "ppo.precision=fp32", f"launch.num_processes={processes}"]
        cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides)
        run = RunPaths(cfg.run_dir)
        train_rows, _ = problems(cfg.reason, cfg.seed)
        answers = [(f"So it is {p.answer}.\n#### {p.answer}", True) for p in train_rows]
        answers += [(f"I think {p.answer}1.\n#### {p.answer}1", False) for p in train_rows]
        rows = [
            {"problem_id": p.problem_id, "index": i, "text": text, "correct": ok, "finish_reason": "stop"}
            for i, (p, (text, ok)) in enumerate(zip(train_rows * 2, answers, strict=True))
        ]
        write_jsonl(run.reason / "init" / "orm" / "candidates.jsonl", rows)
        assert orm_data(cfg, run)["pairs"] == 8  # per problem: (right, wrong) and (worked solution, wrong)
        metrics = train_in_child(cfg, run, "selfreward.baselines.reason", ["--job", "orm"])
        assert metrics["processes"] == processes and metrics["effective_batch"] == 4 and metrics["steps"] == 2
        trained[processes] = run.reason / "init" / "orm" / "model"
        assert (run.reason / "init" / "orm" / "reward_model_log.jsonl").exists()
    two, one = weights(trained[2]), weights(trained[1])
    worst = assert_close(two, one, atol=1e-4)
    print(f"reward model: largest |2-process - 1-process| weight difference {worst:.2e}")


def test_a_ppo_update_on_two_cpu_processes_equals_one(tmp_path: Path, tiny_model: Path) -> None:
    """PPO (ours, DDP through accelerate) on the same rollouts: each process samples and scores half of every
    rollout and takes half of every minibatch; the actor, the critic and the logged statistics equal one
    process's."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = {}
    for processes in (2, 1):
        out = tmp_path / f"p{processes}"
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if processes == 2 else []
        cmd = [sys.executable, *launcher, "-m", "tests.ppo_processes", "--model", str(tiny_model), "--out", str(out)]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count(f"processes {processes}") == processes
        run[processes] = out
    two, one, start = weights(run[2] / "model"), weights(run[1] / "model"), weights(tiny_model)
    assert two.keys() == start.keys()
    moved = max((one[k] - start[k]).abs().max().item() for k in one)  # 8 AdamW steps of lr 1e-3
    worst = assert_close(two, one, atol=1e-4)
    assert worst < 0.01 * moved  # float noise of summing in another order, not another update
    critic = assert_close(load_file(run[2] / "critic.safetensors"), load_file(run[1] / "critic.safetensors"), 1e-4)
    print(
        f"ppo: largest |2-process - 1-process| difference: actor {worst:.2e} (moved {moved:.2e}), critic {critic:.2e}"
    )
    logs = [[json.loads(x) for x in (run[p] / "log.jsonl").read_text().splitlines()] for p in (2, 1)]
    assert len(logs[0]) == len(logs[1]) == 2
    for a, b in zip(*logs, strict=True):
        for key in ("reward_raw", "reward_scaled", "kl", "kl_coef", "policy_loss", "value_loss", "clip_frac"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
        assert a["response_length"] == b["response_length"] and a["ended_frac"] == b["ended_frac"]
    assert sum(row["ended_frac"] for row in logs[0]) == 1.0  # 8 prompts once: the 4 with even numbers ended


def test_reason_ppo_samples_on_two_cpu_processes(tmp_path: Path, tiny_model: Path) -> None:
    """`selfreward reason`'s PPO round as its training child on 2 processes, sampling for real: every training
    problem is sampled `reason.samples` times over the two processes' shares, each rollout verified once into
    candidates.jsonl, and the saved policy is whole."""
    import json

    from transformers import AutoModelForCausalLM

    overrides = [f"model={tiny_model}", f"output_dir={tmp_path}", "reason.sft_init=false", "reason.orm=false"]
    overrides += ["reason.train_problems=4", "reason.test_problems=2", "reason.samples=2", "launch.num_processes=2"]
    overrides += ["reason.methods=[ppo_verifier]"]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    run = RunPaths(cfg.run_dir)
    run.root.mkdir(parents=True)
    job = ["--job", "round", "--method", "ppo_verifier", "--round", "1"]
    metrics = train_in_child(cfg, run, "selfreward.baselines.reason", job)
    assert metrics["processes"] == 2 and metrics["updates"] == 2 and metrics["rollouts"] == 8
    it = run.reason / "ppo_verifier" / "round_1"
    rollouts = [json.loads(x) for x in (it / "candidates.jsonl").read_text().splitlines()]
    counts = {}
    for r in rollouts:
        counts[r["problem_id"]] = counts.get(r["problem_id"], 0) + 1
    assert len(counts) == 4 and set(counts.values()) == {2}
    assert sorted((r["problem_id"], r["index"]) for r in rollouts) == sorted((p, i) for p in counts for i in (0, 1))
    assert len((it / "ppo_log.jsonl").read_text().splitlines()) == 2
    saved = weights(it / "model")
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in weights(tiny_model).items()}
    AutoModelForCausalLM.from_pretrained(it / "model", use_safetensors=True)


def test_selfreward_ppo_on_two_cpu_processes(tmp_path: Path, tiny_model: Path) -> None:
    """`selfreward ppo` (judge reward) with `launch.num_processes=2`: one command, its training child on two
    processes (the main one judges every response), the metrics and log of a one-process run."""
    import json

    from selfreward.artifacts import read_jsonl, write_jsonl
    from selfreward.baselines.ppo import run_ppo

    from .test_ppo import PROMPTS

    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [f"model={tiny_model}", f"output_dir={tmp_path}", "seed_sft=false", "launch.num_processes=2"],
    )
    run = RunPaths(cfg.run_dir)
    write_jsonl(run.iteration(1).prompts, [{"prompt_id": f"p{i}", "text": p} for i, p in enumerate(PROMPTS)])
    paths = run_ppo(cfg)
    metrics = json.loads(paths.metrics.read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2 and metrics["responses"] == 8
    assert len(read_jsonl(paths.log)) == 2
    saved = weights(paths.model)
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in weights(tiny_model).items()}
