"""Run bookkeeping shared by the loop and the baselines: which stages are done, what they cost, and what
made them. Reads and writes only the run folder's bookkeeping files (`.stages/` markers, metrics.json,
manifest.json, run.log); never a stage's data.

- `StageRunner`: skips a finished stage whose fingerprint (config + inputs, chained through every stage
  before it) is unchanged, refuses a changed one (`StageChanged`) unless forced, runs the rest with their
  wall time and peak memory into metrics.json, and writes each stage's marker after its outputs.
- `RunChain`: carries that fingerprint chain from one iteration (or round) to the next, so a redone
  stage redoes everything after it, in its iteration and the later ones.
- `Engine`: the generation engine of one iteration, started on first use and closed before training.
- `open_run`: the run folder, locked for the life of the process (`iterations/<run>/.lock`: a second
  `iterate`, `expert-iter` or `ppo` on the same run fails at once naming the PID that holds it; the lock of
  a process that died is free again), then cleared of the temporaries a killed run left behind.
- `PeakMemory`, `manifest`, `add_log_file`, `file_digests`.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import psutil

from selfreward.artifacts import (
    IterPaths,
    RunPaths,
    clear_marker,
    file_digest,
    project_file,
    read_json,
    read_marker,
    stale_temps,
    write_json,
    write_marker,
    write_text,
)
from selfreward.cards import library_versions
from selfreward.config import ConfigError, RunConfig, dump_yaml, fingerprint, load_config
from selfreward.errors import UserError
from selfreward.generation import Generator, open_generator
from selfreward.models import check_model

log = logging.getLogger(__name__)


class StageChanged(UserError):
    """A finished stage whose config (or inputs) changed since it ran."""


class RunLocked(UserError):
    """Another live process holds the run's lock (`iterations/<run>/.lock`)."""


class StageRunner:
    """Skips finished stages, runs the rest, records wall time and peak memory in metrics.json."""

    def __init__(
        self,
        it: IterPaths,
        force: bool,
        upstream_ran: bool,
        chain: str,
        k: int,
        names: tuple[str, ...],
        progress: Progress | None = None,
        before_first_run: Callable[[], None] | None = None,
    ) -> None:
        self.it, self.force, self.ran, self.chain, self.names = it, force, upstream_ran, chain, names
        self.k, self.progress, self.before_first_run = k, progress, before_first_run
        old = read_json(it.metrics) if it.metrics.exists() else {}
        self.metrics: dict[str, Any] = {"iteration": k, "stages": old.get("stages", {}), "engine": old.get("engine")}

    def run(self, name: str, config: Any, fn: Callable[[], dict], inputs: Callable[[], Any] | None = None) -> None:
        """Run stage `name` unless its marker says it is done with the same `config` and `inputs`.

        `config` is what the user chose (with the chain of every stage before it): a change is refused
        (`StageChanged`) unless forced. `inputs` gives the digests of what the stage reads that earlier
        stages made (their files, the start model's weights, `artifacts.file_digest`/`model_digest`); it
        is recorded in the marker, and when it changed (an earlier stage was redone, in this process or
        one that was killed) the stage runs again without asking."""
        self.chain = fingerprint(config, self.chain)
        marker = read_marker(self.it, name)
        digest = fingerprint(inputs()) if inputs is not None else None
        if marker is not None and not self.ran:
            if marker["fingerprint"] != self.chain and not self.force:
                raise StageChanged(
                    f"{self.it.root}/{name} was made with a different config; "
                    "re-run with --force to redo it and every stage after it, or choose another run_name"
                )
            if marker["fingerprint"] == self.chain:
                if marker.get("inputs") == digest:
                    log.info("%s/%s: done, skipped", self.it.root.name, name)
                    return
                log.info(
                    "%s/%s: what it reads changed since it ran (an earlier stage was redone)", self.it.root.name, name
                )
        if self.before_first_run is not None:
            self.before_first_run()
        for later in self.names[self.names.index(name) :]:
            clear_marker(self.it, later)
        log.info("%s/%s: running", self.it.root.name, name)
        if self.progress is not None:
            log.info("%s", self.progress.line(self.it, self.k, self.names, name))
        with PeakMemory() as mem:
            start = time.perf_counter()
            stage_metrics = fn()
            wall = time.perf_counter() - start
        self.metrics["stages"][name] = {
            **stage_metrics,
            "wall_s": round(wall, 1),
            "peak_rss_gib": round(mem.peak_gib, 2),
        }
        write_json(self.it.metrics, self.metrics)
        write_marker(self.it, name, self.chain, inputs=digest)
        log.info("%s/%s: finished in %.0f s (peak memory %.2f GiB)", self.it.root.name, name, wall, mem.peak_gib)
        self.ran = True

    def finish(self) -> None:
        if self.ran:
            stages = self.metrics["stages"]
            self.metrics["wall_s"] = round(sum(s.get("wall_s", 0) for s in stages.values()), 1)
            self.metrics["peak_rss_gib"] = max((s.get("peak_rss_gib", 0) for s in stages.values()), default=0)
            write_json(self.it.metrics, self.metrics)


class Progress:
    """The run-level progress line logged as each stage starts, above the libraries' own bars:
    `[default] iteration 2/3 · stage 3/5 judgements · elapsed 14m02s · ETA 17m10s`. The ETA is the
    previous iteration's (round's) time for this iteration's remaining stages plus its total for each
    iteration still to come; none before a first iteration has finished."""

    def __init__(self, run_name: str, unit: str, total: int) -> None:
        self.run_name, self.unit, self.total = run_name, unit, total
        self.start = time.perf_counter()

    def line(self, it: IterPaths, k: int, names: tuple[str, ...], name: str) -> str:
        i = names.index(name)
        head = f"[{self.run_name}] {self.unit} {k}/{self.total} · stage {i + 1}/{len(names)} {name}"
        elapsed = f"elapsed {_clock(time.perf_counter() - self.start)}"
        eta = eta_s(previous_stage_times(it, k), names, i, self.total - k)
        return f"{head} · {elapsed} · " + (f"ETA {_clock(eta)}" if eta is not None else "ETA unknown")


def previous_stage_times(it: IterPaths, k: int) -> dict[str, float]:
    """Stage wall times of the iteration (round) before `it` (iter_{k-1}, round_{k-1}); {} when none."""
    prev = it.root.with_name(it.root.name.rsplit("_", 1)[0] + f"_{k - 1}") / it.metrics.name
    if k < 1 or not prev.exists():
        return {}
    return {name: float(s["wall_s"]) for name, s in read_json(prev).get("stages", {}).items() if "wall_s" in s}


def eta_s(previous: dict[str, float], names: tuple[str, ...], index: int, iterations_after: int) -> float | None:
    """Seconds left: the previous iteration's times of stages `names[index:]` plus its whole time for each of
    `iterations_after` later iterations; None when the previous iteration did not run all of `names`."""
    if not all(n in previous for n in names):
        return None
    return sum(previous[n] for n in names[index:]) + iterations_after * sum(previous[n] for n in names)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m{s:02d}s" if m >= 60 else f"{m}m{s:02d}s"


class RunChain:
    """The fingerprint chain through a run's iterations: iteration k's stages start from the chain where
    iteration k-1 ended, and a stage that ran makes every later stage run too."""

    def __init__(
        self,
        cfg: RunConfig,
        force: bool,
        progress: Progress | None = None,
        before_first_run: Callable[[], None] | None = None,
        start: str | None = None,
    ) -> None:
        """`before_first_run` is called once, just before the first stage that runs (after its checks):
        e.g. `record_invocation`, so a refused or do-nothing invocation writes nothing. `start`: what every
        stage depends on beyond the model and seed (e.g. the contents of `selfreward reason`'s problems)."""
        self.force = force
        self.upstream_ran = False
        self.fingerprint = fingerprint(cfg.model, cfg.seed, *([start] if start is not None else []))
        self.progress = progress
        self._before = before_first_run

    def _first_run(self) -> None:
        if self._before is not None:
            before, self._before = self._before, None
            before()

    @contextmanager
    def iteration(self, it: IterPaths, k: int, names: tuple[str, ...]) -> Iterator[StageRunner]:
        """The stages of one iteration (or round) in `it`; totals are written and the chain carried on at
        the end."""
        progress = self.progress if k >= 1 else None  # the seed SFT is no iteration of the count
        stages = StageRunner(it, self.force, self.upstream_ran, self.fingerprint, k, names, progress, self._first_run)
        yield stages
        stages.finish()
        self.upstream_ran, self.fingerprint = stages.ran, stages.chain


class Engine:
    """One generation engine per iteration, started on first use."""

    def __init__(self, cfg: RunConfig, model: str) -> None:
        self.cfg, self.model = cfg, model
        self.gen: Generator | None = None
        self.start_s = 0.0

    def __call__(self) -> Generator:
        """The engine for a stage: started on first use, later handed out with its prefix cache emptied, so what a
        stage samples does not depend on the stages the engine served before it (a resumed run starts a fresh
        engine at the stage it redoes; in bf16 a prefix read from the cache is not bitwise one computed anew)."""
        if self.gen is None:
            start = time.perf_counter()
            self.gen = open_generator(self.cfg.engine, self.model, Path(self.cfg.cache_dir), seed=self.cfg.seed)
            self.start_s = time.perf_counter() - start
        else:
            self.gen.reset_prefix_cache()
        return self.gen

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # also when a stage raised: a launched server or vLLM engine does not outlive it

    def close(self) -> dict | None:
        """Stop the engine (if it started) and return its numbers; a second call does nothing."""
        if self.gen is None:
            return None
        gen, self.gen = self.gen, None
        info = {
            "engine": gen.engine_name,
            "start_s": round(self.start_s, 1),
            "generated_tokens": gen.generated_tokens,
            "generation_s": round(gen.generation_seconds, 1),
            "tokens_per_s": round(gen.generated_tokens / gen.generation_seconds, 1)
            if gen.generation_seconds
            else None,
        }
        gen.close()
        return info


def _pss(p: psutil.Process) -> int:
    try:
        return p.memory_full_info().pss
    except (AttributeError, psutil.AccessDenied):
        return p.memory_info().rss


class PeakMemory:
    """Peak memory of this process and its children (e.g. vLLM's engine), sampled every 2 s: the sum
    of their proportional set sizes (PSS) where the OS reports it (Linux), so pages the processes share
    (torch libraries, vLLM's shared-memory queues) count once; else the sum of resident sizes, which
    counts shared pages in every process. A vLLM stage on CPU includes the engine's KV cache
    (`engine.kv_cache_gib`, allocated up front).

    Reading PSS parses /proc/PID/smaps_rollup, which costs real CPU on a large process: at 0.2 s the
    sampler thread was busy 39% of the seed SFT's wall time on 2 cores (py-spy) and a 4-step SFT took 166 s
    instead of 142 s (MEASURED.md, 2026-12-01); every 2 s it reads ten times less often. Memory grows over seconds
    (model loads, KV cache allocation), so the peak is still caught."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.peak_gib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while True:
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += _pss(p)
                except psutil.Error:
                    pass
            self.peak_gib = max(self.peak_gib, total / 2**30)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def open_run(cfg: RunConfig) -> RunPaths:
    """The run folder of `cfg`: its model checked (nothing is written for a bad one), the folder created and
    locked for the life of this process (`lock_run`), this invocation's log going to its run.log, and the
    temporaries of an interrupted run removed (`remove_stale_temps`)."""
    check_model(cfg.model)
    run = RunPaths(cfg.run_dir)
    try:
        run.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{run.root}: cannot create the run folder: {e.strerror}") from None
    lock_run(run)
    add_log_file(run.log)
    remove_stale_temps(run.root)
    return run


_HELD_LOCKS: dict[Path, IO[str]] = {}
"""The lock files this process holds, by resolved run folder: kept open (closing one would free it)."""


def lock_run(run: RunPaths) -> None:
    """Take the run's exclusive lock (non-blocking flock on `.lock`) for the life of this process and write
    its PID, host and command into it; if another process holds it, RunLocked naming that PID. The kernel
    frees the lock when its process ends however it ends, so a dead run's lock is taken over as it stands."""
    key = run.root.resolve()
    if key in _HELD_LOCKS:  # this process already holds it (a second open_run in the same process)
        return
    f = run.lock.open("a+")  # append mode: the holder's note is not truncated before the lock is ours
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunLocked(
            f"{run.lock}: the run is in use by {holder}; wait for it to end, or choose another run_name"
        ) from None
    f.truncate(0)
    f.write(f"PID {os.getpid()} on {socket.gethostname()} ({shlex.join(sys.argv)})\n")
    f.flush()
    _HELD_LOCKS[key] = f


def release_run(run: RunPaths) -> None:
    """Give up this process's lock on the run (`lock_run`), e.g. when a notebook or test is done with it."""
    f = _HELD_LOCKS.pop(run.root.resolve(), None)
    if f is not None:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def remove_stale_temps(root: Path) -> None:
    """Remove what an interrupted run left under `root` (`artifacts.stale_temps`: atomic writes' temporary
    folders, trainers' scratch folders), logging each. Call it only with the run's lock held."""
    for path in stale_temps(root):
        log.info("removing %s (left by an interrupted run)", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def record_invocation(cfg: RunConfig, run: RunPaths, argv: list[str] | None) -> None:
    """The resolved config and the manifest of this invocation, beside the run's outputs (config.yaml and
    manifest.json: the last invocation that ran a stage), and both kept in invocations/<UTC time>-<pid>.json."""
    record = manifest(argv or sys.argv)
    write_text(run.config, dump_yaml(cfg))
    write_json(run.manifest, record)
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    write_json(run.invocations / f"{stamp}-{os.getpid()}.json", {"config": dump_yaml(cfg), "manifest": record})


def file_digests(paths: list[str]) -> list[str | None]:
    """sha256 of each file's bytes (None for an empty path): a stage's fingerprint follows its input files."""
    return [file_digest(project_file(p)) if p else None for p in paths]


def manifest(argv: list[str]) -> dict:
    versions = library_versions()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_file("."), capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = None
    return {
        "command": argv,
        "git_sha": sha,
        "versions": versions,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": psutil.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "gpus": _gpus(),
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _gpus() -> list[str]:
    import torch  # heavy: imported only when a manifest is written

    return (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )


def add_log_file(path: Path) -> None:
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers):
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


# --------------------------------------------------------------------------- training in a child process


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
        held = _HELD_LOCKS.get(run.root.resolve())
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


# --------------------------------------------------------------------------- status


def lock_holder(run: RunPaths) -> str | None:
    """Who holds the run's lock (the PID, host and command it wrote), or None when no live process does.
    Tested with a shared non-blocking flock released at once (a run starting in that instant sees it held)."""
    if not run.lock.exists():
        return None
    with run.lock.open() as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def run_status(
    run: RunPaths, layout: list[tuple[str, IterPaths, tuple[str, ...]]], running: str | None = None
) -> list[dict[str, Any]]:
    """One row per stage of `layout` (each entry: the command it belongs to (`iterate`, `expert-iter`,
    `reason`), the iteration's folder and its stage names, in run order): `done` (its marker exists; with its
    wall time from metrics.json and when it finished), `running` (the first stage not done of the command
    `running`, the one that holds the run's lock; with how long since the stage before it finished) or
    `pending`."""
    rows, last_done, running_given = [], None, False
    for command, it, names in layout:
        stages = read_json(it.metrics).get("stages", {}) if it.metrics.exists() else {}
        for name in names:
            row: dict[str, Any] = {"folder": str(it.root.relative_to(run.root)), "stage": name}
            if it.marker(name).exists():
                last_done = it.marker(name).stat().st_mtime
                row.update(state="done", wall_s=stages.get(name, {}).get("wall_s"), finished=last_done)
            elif command == running and not running_given:
                running_given = True
                row.update(state="running", since=last_done)
            else:
                row.update(state="pending")
            rows.append(row)
    return rows


def holder_command(holder: str | None) -> str | None:
    """Which command holds the lock, from what it wrote there (`PID n on host (selfreward iterate ...)`)."""
    for command in ("expert-iter", "reason", "iterate", "ppo"):
        if holder and f" {command}" in holder:
            return command
    return None
