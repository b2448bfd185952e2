"""Training stages in child processes: the command (`python -m`, torchrun, accelerate launch), its environment,
and the child's side (arguments, set-up, metrics back to the parent). The loop and the baselines call `train`.

A training child gets the invocation's resolved config and the run folder, writes its metrics to a file the
parent reads, and exits; a UserError there (bad input) comes back to the parent as its own one line
(`ChildInputError`). The child shares the run's lock (the flock is on the open file), so a new invocation cannot
take the run while a child of a parent that died is still writing into it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from selfreward import progress
from selfreward.artifacts import RunPaths, project_file, read_json, write_json
from selfreward.config import ConfigError, RunConfig, dump_yaml, load_config
from selfreward.errors import UserError
from selfreward.runs import add_log_file, held_lock

log = logging.getLogger(__name__)


def train(cfg: RunConfig, run: RunPaths, module: str, args: list[str], inline: Callable[[], dict]) -> dict:
    """A training stage: in a child process (`launch.*`: `python -m module`, or `accelerate launch` for
    several processes), or `inline` in this process."""
    launch = cfg.launch
    if launch.separate_process or launch.num_processes > 1 or launch.accelerate_config or launch.fsdp:
        return train_in_child(cfg, run, module, args)
    return inline()


class StageFailed(UserError):
    """A training stage run in a child process exited with an error (its own log says why)."""


class ChildInputError(UserError):
    """A training child stopped on bad input (a UserError there, e.g. no pairs, every prompt too long): its one
    line, raised again in the parent (`stage_main` passes it through the metrics file)."""


def training_command(cfg: RunConfig, module: str, args: list[str]) -> list[str]:
    """`python -m module args`, or on several processes: `accelerate launch` on GPUs (with the accelerate
    config file when one is given, whose process count wins unless `launch.num_processes` > 1), and
    torchrun on a machine without a GPU (accelerate's own CPU launcher starts one process only; under
    torchrun, LOCAL_RANK and WORLD_SIZE make accelerate use MULTI_CPU with gloo)."""
    launch = cfg.launch
    if launch.num_processes == 1 and not launch.accelerate_config:
        return [sys.executable, "-m", module, *args]
    if not _cuda_visible():
        n = str(launch.num_processes)
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            n,
            "-m",
            module,
            *args,
        ]
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.accelerate_config:
        cmd += ["--config_file", str(project_file(launch.accelerate_config))]
    if launch.num_processes > 1 or not launch.accelerate_config:
        cmd += ["--num_processes", str(launch.num_processes)]
    return [*cmd, "-m", module, *args]


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def launch_env(cfg: RunConfig) -> dict[str, str]:
    """Environment of a training child: with `launch.fsdp`, accelerate's FSDP plugin (FSDP2, full shard,
    each decoder layer wrapped, a full state dict gathered for saving), which the trainers pick up."""
    if not cfg.launch.fsdp:
        return {}
    if not _cuda_visible():
        raise ConfigError(
            "launch.fsdp: accelerate enables FSDP on accelerators only (its state picks FSDP for multi-GPU/XPU/"
            "NPU..., never MULTI_CPU), so on this machine it would train DDP; leave launch.fsdp=false here"
        )
    return {
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_VERSION": "2",
        "FSDP_RESHARD_AFTER_FORWARD": "true",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
        "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
    }


def train_in_child(cfg: RunConfig, run: RunPaths, module: str, args: list[str]) -> dict:
    """Run a training stage's module (`selfreward.loop.sft`, `selfreward.loop.dpo`) in a child process with
    this invocation's resolved config, wait for it, and return the metrics it wrote. The child logs to the
    same terminal and run.log; its memory is counted in the stage's peak (the process tree) and freed
    when it exits."""
    with tempfile.TemporaryDirectory(prefix=".launch.", dir=run.root) as scratch:
        config, metrics = Path(scratch) / "config.yaml", Path(scratch) / "metrics.json"
        config.write_text(dump_yaml(cfg), encoding="utf-8")
        cmd = training_command(
            cfg, module, ["--run-dir", str(run.root), "--config", str(config), "--metrics-out", str(metrics), *args]
        )
        log.info("training in a child process: %s", shlex.join(cmd))
        # the child shares the run's lock (the flock is on the open file), so a new invocation cannot take
        # the run while a training child of a parent that died is still writing into it
        held = held_lock(run)
        env = {**os.environ, **launch_env(cfg)}
        rc = subprocess.run(cmd, pass_fds=(held.fileno(),) if held else (), env=env).returncode
        written = read_json(metrics) if metrics.exists() else None
        if written is not None and "user_error" in written:
            raise ChildInputError(written["user_error"])
        if rc != 0 or written is None:
            raise StageFailed(f"{module} exited with code {rc}; its log is above and in {run.log}")
        return written


def per_process_accumulation(grad_accum: int, key: str) -> int:
    """`grad_accum` (the config's `key`) divided by the number of processes (WORLD_SIZE under accelerate or
    torchrun), so the effective batch, and the step count, are the same on 1 or N processes. The same for a
    batch size where there is no accumulation to divide (the reward model's `ppo.rm_batch_size`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if grad_accum % world:
        raise ConfigError(
            f"{key}={grad_accum} is not divisible by the {world} processes: the effective batch "
            "would change with the number of processes; choose a multiple"
        )
    return grad_accum // world


def stage_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every training stage's `python -m` entry takes (`train_in_child` passes them)."""
    parser = argparse.ArgumentParser(description=description)
    # --run-dir for launchers: torchrun takes `--run` as an abbreviation of its own --run-path
    parser.add_argument("--run", "--run-dir", dest="run", required=True, help="iterations/<run>")
    parser.add_argument("--config", default=None, help="resolved config (default: the run's config.yaml)")
    parser.add_argument("--metrics-out", default=None, help="write the stage's metrics here (JSON)")
    return parser


def stage_setup(args: argparse.Namespace) -> tuple[RunConfig, RunPaths]:
    """The config and run of a stage run alone; its log goes to stderr and the run's run.log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = RunPaths(Path(args.run))
    cfg = load_config(args.config or run.config)
    if is_main_process():
        add_log_file(run.log)
        progress.attach(run.root)  # the stage its parent opened: this process reports the optimiser steps
    progress.quiet_libraries()
    return cfg, run


def is_main_process() -> bool:
    """Rank 0 under a launcher (accelerate, torchrun), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def write_stage_metrics(path: str | None, metrics: dict) -> None:
    """The stage's metrics for the parent (`train_in_child`); written by the main process only."""
    if path and is_main_process():
        write_json(Path(path), metrics)


def stage_main(args: argparse.Namespace, job: Callable[[], dict]) -> None:
    """Run a training child's job and write its metrics for the parent. A UserError (bad input, not a crash)
    is logged, written as {"user_error": message} for the parent to raise as its own one line
    (`ChildInputError`), and the child exits with code 2."""
    try:
        metrics = job()
    except UserError as e:
        log.error("%s", e)
        write_stage_metrics(args.metrics_out, {"user_error": str(e)})
        sys.exit(2)
    write_stage_metrics(args.metrics_out, metrics)
