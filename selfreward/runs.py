"""Run bookkeeping shared by the loop and the baselines: which stages are done, what they cost, and what
made them. Reads and writes only the run folder's bookkeeping files (`.stages/` markers, metrics.json,
manifest.json, run.log); never a stage's data.

- `StageRunner`: skips a finished stage whose fingerprint (config + inputs, chained through every stage
  before it) is unchanged, refuses a changed one (`StageChanged`) unless forced, runs the rest with their
  wall time and peak memory into metrics.json, and writes each stage's marker after its outputs.
- `RunChain`: carries that fingerprint chain from one iteration (or round) to the next, so a redone
  stage redoes everything after it, in its iteration and the later ones.
- `open_run`: the run folder, locked for the life of the process (`iterations/<run>/.lock`: a second
  `iterate`, `expert-iter` or `ppo` on the same run fails at once naming the PID that holds it; the lock of
  a process that died is free again), then cleared of the temporaries a killed run left behind.
- `PeakMemory`, `manifest`, `add_log_file`, `file_digests`.

Training stages in child processes are `selfreward.launch`; the generation engine of an iteration is
`generation.Engine`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from selfreward import progress
from selfreward.artifacts import (
    IterPaths,
    RunPaths,
    clear_marker,
    file_digest,
    model_digest,
    project_file,
    read_json,
    read_marker,
    stale_temps,
    write_json,
    write_marker,
    write_text,
)
from selfreward.cards import library_versions
from selfreward.config import RunConfig, dump_yaml, fingerprint
from selfreward.errors import UserError
from selfreward.models import check_model
from selfreward.store import StageStore

log = logging.getLogger(__name__)


class StageChanged(UserError):
    """A finished stage whose config (or inputs) changed since it ran."""


class RunLocked(UserError):
    """Another live process holds the run's lock (`iterations/<run>/.lock`)."""


@dataclass(frozen=True)
class Stage:
    """What a stage's fingerprint covers, declared beside the stage's `run` (each stage module's `STAGE`).

    `config(cfg)`: the settings it uses, and `files(cfg)`: the user's files it reads (templates, seed data; by
    content), both what the user chose: a change is refused unless forced. `reads`: the files of its iteration
    that earlier stages wrote (`IterPaths` attributes, by content): a change redoes the stage. The models it
    reads and anything else made earlier (the few-shot pool) are passed to `StageRunner.run_stage`. `writes`: its
    outputs (`IterPaths` attributes), what `store.StageStore` keeps and restores so another run can reuse it; a
    stage that declares none is never reused."""

    name: str
    config: Callable[[RunConfig], Any]
    files: Callable[[RunConfig], list[str]] = lambda cfg: []
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


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
        store: StageStore | None = None,
    ) -> None:
        self.it, self.force, self.ran, self.chain, self.names = it, force, upstream_ran, chain, names
        self.k, self.progress, self.before_first_run, self.store = k, progress, before_first_run, store
        old = read_json(it.metrics) if it.metrics.exists() else {}
        self.metrics: dict[str, Any] = {"iteration": k, "stages": old.get("stages", {}), "engine": old.get("engine")}

    def run(
        self,
        name: str,
        config: Any,
        fn: Callable[[], dict],
        inputs: Callable[[], Any] | None = None,
        writes: dict[str, Path] | None = None,
    ) -> None:
        """Run stage `name` unless its marker says it is done with the same `config` and `inputs`, or restore it from
        the store (`store.StageStore`) when another run made it with the same chain and inputs (`writes`: its
        outputs by name; a stage without them is not reused).

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
        if marker is None and not self.ran and not self.force:
            done_later = [n for n in self.names[self.names.index(name) + 1 :] if self.it.marker(n).exists()]
            if done_later:  # a stage a setting added (e.g. meta_judge.enabled) before stages already done
                raise StageChanged(
                    f"{self.it.root}/{name} is a stage this config adds before finished ones "
                    f"({', '.join(done_later)}); re-run with --force to run it and redo every stage after it, "
                    "or choose another run_name"
                )
        if self.before_first_run is not None:
            self.before_first_run()
        for later in self.names[self.names.index(name) :]:
            clear_marker(self.it, later)
        key = self.store.key(name, self.chain, digest) if writes and self.store is not None else None
        if key is not None and self._reuse(name, key, writes or {}, digest):
            return
        log.info("%s/%s: running", self.it.root.name, name)
        if self.progress is not None:
            log.info("%s", self.progress.line(self.it, self.k, self.names, name))
            progress.start(self.progress.folder, self.progress.state(self.it, self.k, self.names, name))
        with PeakMemory() as mem:
            start = time.perf_counter()
            try:
                stage_metrics = fn()
            finally:
                progress.stop()  # what runs between stages (the evaluations after an iteration) is not this stage
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
        if key is not None and self.store is not None:
            self.store.publish(key, writes or {}, self.metrics["stages"][name], f"{self.it.root}/{name}")

    def _reuse(self, name: str, key: str, writes: dict[str, Path], digest: Any) -> bool:
        """Restore stage `name` from the store; its metrics say where from, and so does the run's manifest."""
        entry = self.store.restore(key, writes) if self.store is not None else None
        if entry is None:
            return False
        made = entry.get("metrics", {})
        self.metrics["stages"][name] = {
            **made,
            "wall_s": 0.0,  # this run spent none; what the stage cost where it ran is kept beside
            "source_wall_s": made.get("wall_s"),
            "reused_from": entry.get("source"),
        }
        write_json(self.it.metrics, self.metrics)
        write_marker(self.it, name, self.chain, inputs=digest, reused_from=entry.get("source"))
        manifest_file = self.it.root.parent / "manifest.json"
        if manifest_file.exists():
            record = read_json(manifest_file)
            record.setdefault("reused", []).append({"stage": f"{self.it.root.name}/{name}", "from": entry["source"]})
            write_json(manifest_file, record)
        log.info("%s/%s: reused from %s", self.it.root.name, name, entry.get("source"))
        self.ran = True
        return True

    def run_stage(
        self,
        stage: Stage,
        cfg: RunConfig,
        fn: Callable[[], dict],
        models: Sequence[str | None] = (),
        extra: Any = None,
    ) -> None:
        """`run` with the fingerprint `stage` declares: its config and files, then the digests of the files it
        `reads`, of `models` (the weights it loads; None for none) and of `extra`."""

        def inputs() -> Any:
            made = [file_digest(getattr(self.it, name)) for name in stage.reads]
            return made, [model_digest(m) if m else None for m in models], extra

        writes = {name: getattr(self.it, name) for name in stage.writes}
        self.run(stage.name, (stage.config(cfg), file_digests(stage.files(cfg))), fn, inputs, writes)

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

    def __init__(self, run_name: str, unit: str, total: int, folder: Path | None = None) -> None:
        """`folder`: where progress.json goes (the run folder; default the working folder's `iterations/<run>`)."""
        self.run_name, self.unit, self.total = run_name, unit, total
        self.folder = Path(folder) if folder is not None else Path("iterations") / run_name
        self.started_at = time.time()

    def state(self, it: IterPaths, k: int, names: tuple[str, ...], name: str) -> dict[str, Any]:
        """What `progress.start` writes to progress.json as stage `name` starts."""
        i = names.index(name)
        return {
            "run": self.run_name,
            "unit_name": self.unit,
            "k": k,
            "total_iterations": self.total,
            "stage": name,
            "stage_index": i + 1,
            "stages": len(names),
            "run_started": self.started_at,
            "eta_s": eta_s(previous_stage_times(it, k), names, i, self.total - k),
        }

    def line(self, it: IterPaths, k: int, names: tuple[str, ...], name: str) -> str:
        return progress.line(self.state(it, k, names, name))


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
        reuse: bool | None = None,
    ) -> None:
        """`before_first_run` is called once, just before the first stage that runs (after its checks):
        e.g. `record_invocation`, so a refused or do-nothing invocation writes nothing. `start`: what every
        stage depends on beyond the model and seed (e.g. the contents of `selfreward reason`'s problems)."""
        self.force = force
        self.upstream_ran = False
        self.fingerprint = fingerprint(cfg.model, cfg.seed, *([start] if start is not None else []))
        self.progress = progress
        self._before = before_first_run
        reuse = cfg.reuse if reuse is None else reuse
        self.store = StageStore(Path(cfg.cache_dir) / "stages") if reuse else None

    def _first_run(self) -> None:
        if self._before is not None:
            before, self._before = self._before, None
            before()

    @contextmanager
    def iteration(self, it: IterPaths, k: int, names: tuple[str, ...]) -> Iterator[StageRunner]:
        """The stages of one iteration (or round) in `it`; totals are written and the chain carried on at
        the end."""
        progress = self.progress
        stages = StageRunner(
            it, self.force, self.upstream_ran, self.fingerprint, k, names, progress, self._first_run, self.store
        )
        yield stages
        stages.finish()
        self.upstream_ran, self.fingerprint = stages.ran, stages.chain


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
    instead of 142 s (docs/LOG.md, 2026-12-01); every 2 s it reads ten times less often. Memory grows over seconds
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


def held_lock(run: RunPaths) -> IO[str] | None:
    """The open lock file of a run this process holds (a training child inherits it), or None."""
    return _HELD_LOCKS.get(run.root.resolve())


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
