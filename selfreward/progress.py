"""One run-level progress view: where a run is and how long is left, in the console and in a file.

Writes iterations/<run>/progress.json (atomically, at most once a second): the run, iteration k of N, stage i of n
and its name, the stage's own count (`done` of `total` `unit`: requests generated, candidates answered or judged,
optimiser steps), when the run and the stage started, and the ETA. `selfreward status RUN` reads it from another
terminal; the console gets the same numbers as one plain log line at each tenth of a stage (a terminal or not:
CI and `nohup` logs stay readable).

Who reports: `runs.StageRunner` opens a stage (`start`); the generation engines report through `ReportingBar`,
the tqdm class they hand to vLLM and use themselves, whose own bar is never drawn; the training stages report
through `TrainerProgress`, a transformers callback, from their child process (`attach` reopens the file there). The
libraries' own bars (vLLM, datasets, the trainer's) are switched off in the loop (`quiet_libraries`); their log
lines still go to run.log.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from selfreward.artifacts import read_json, write_json

log = logging.getLogger(__name__)

FILE = "progress.json"


def clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m{s:02d}s" if m >= 60 else f"{m}m{s:02d}s"


class StageProgress:
    """The progress of the stage that is running, written to `path`."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        self.path, self.state = path, dict(state)
        self.state.setdefault("stage_started", time.time())
        self.written, self.logged_tenth = 0.0, -1
        self.write(force=True)

    def begin(self, total: int | None) -> int:
        """A stage's next batch of work (one `generate` call) of `total` more: its counts add to what the stage
        has done so far. Returns the count it starts from."""
        start = int(self.state.get("done") or 0)
        if total is not None:
            self.state["total"] = start + total if self.state.get("done") is not None else total
        return start

    def update(self, done: int, total: int | None, unit: str) -> None:
        self.state.update(done=done, total=total, unit=unit)
        finished = total is not None and done >= total
        self.write(force=finished)
        tenth = int(10 * done / total) if total else -1
        if total and tenth != self.logged_tenth:  # a stage's later batch grows its total: the tenth can go back
            self.logged_tenth = tenth
            log.info("%s", line(self.state))

    def write(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self.written >= 1.0:
            self.written = now
            self.state["updated"] = now
            write_json(self.path, self.state)


_current: StageProgress | None = None


def start(run_root: Path, state: dict[str, Any]) -> None:
    """A stage starts: `state` holds run, unit, k, total_iterations, stage, stage_index, stages, run_started,
    eta_s (the run's ETA when the stage started, None when unknown)."""
    global _current
    _current = StageProgress(Path(run_root) / FILE, state)


def attach(run_root: Path, fresh_s: float = 120.0) -> None:
    """In a training child: continue the stage its parent opened just before starting it (a progress file older
    than `fresh_s`, left by another command, is not this stage's)."""
    global _current
    path = Path(run_root) / FILE
    if path.exists() and time.time() - path.stat().st_mtime < fresh_s:
        state = read_json(path)
        state.pop("done", None)
        state.pop("total", None)
        _current = StageProgress(path, state)


def report(done: int, total: int | None, unit: str) -> None:
    if _current is not None:
        _current.update(done, total, unit)


def begin(total: int | None) -> int:
    """Another batch of `total` within the running stage (`StageProgress.begin`); 0 when no stage is open."""
    return _current.begin(total) if _current is not None else 0


def current_total() -> int | None:
    return _current.state.get("total") if _current is not None else None


def stop() -> None:
    global _current
    _current = None


def line(state: dict[str, Any], now: float | None = None) -> str:
    """`[default] iteration 2/3 · stage 3/5 judgements 412/768 candidates judged · elapsed 14m02s · ETA 17m10s`;
    before an iteration has been timed (the seed SFT, iteration 1) the stage's own: `... · stage ETA 3m05s`."""
    now = time.time() if now is None else now
    k = state.get("k")
    where = "seed SFT" if k == 0 else f"{state.get('unit_name', 'iteration')} {k}/{state.get('total_iterations')}"
    stage = f"stage {state.get('stage_index')}/{state.get('stages')} {state.get('stage')}"
    head = f"[{state.get('run')}] {where} · {stage}"
    if state.get("total"):
        head += f" {state.get('done')}/{state['total']} {state.get('unit', '')}".rstrip()
    elapsed = f"elapsed {clock(now - state.get('run_started', now))}"
    eta = state.get("eta_s")
    if eta is not None:
        eta = max(0.0, eta - (now - state.get("stage_started", now)))
        return f"{head} · {elapsed} · ETA {clock(eta)}"
    done, total = state.get("done"), state.get("total")
    if done and total:  # no earlier iteration to time the run by (the first one): the stage's own rate
        left = (now - state.get("stage_started", now)) * (total - done) / done
        return f"{head} · {elapsed} · stage ETA {clock(max(0.0, left))}"
    return f"{head} · {elapsed} · ETA unknown"


def bar_class(unit: str = "requests", per_call: bool = True) -> Any:
    """A tqdm class whose bar goes nowhere (os.devnull) and that reports to the running stage (`ReportingBar`).
    `per_call`: each `update` call is one more `unit` done (vLLM calls it once per finished request, with the number
    of its outputs); else each item iterated is one (the transformers engine's batches)."""
    from tqdm.auto import tqdm

    class ReportingBar(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["file"] = _devnull()
            kwargs["disable"] = False  # enabled, so that callers may read its numbers (vLLM reads `elapsed`)
            kwargs["mininterval"], kwargs["miniters"] = 0, 1  # an iterable's every item reaches `update`
            super().__init__(*args, **kwargs)
            # vLLM also wraps its prompt rendering in the same class: only the work itself is counted
            self.counts = not str(kwargs.get("desc", "")).startswith("Rendering")
            self.start_count = begin(self.total) if self.counts else 0
            self.finished = 0

        def update(self, n: float | None = 1) -> bool | None:
            if self.counts:
                self.finished += 1 if per_call else int(n or 0)
                report(self.start_count + self.finished, current_total(), unit)
            return super().update(n)

    return ReportingBar


_null: Any = None


def _devnull() -> Any:
    global _null
    if _null is None:
        import os

        _null = open(os.devnull, "w")  # noqa: SIM115 - one sink for the life of the process
    return _null


def trainer_callback() -> Any:
    """A transformers `TrainerCallback` that reports optimiser steps (`done` of `max_steps`)."""
    from transformers import TrainerCallback

    class TrainerProgress(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                report(state.global_step, state.max_steps or None, "optimiser steps")

    return TrainerProgress()


def quiet_trainer(trainer: Any) -> None:
    """No log dicts printed to the console (transformers' PrinterCallback, which takes the bar's place with
    `disable_tqdm`): the trainer's logs go to the stage's log file and the tracker, its steps to the progress view."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def quiet_libraries() -> None:
    """The libraries' own progress bars off in this process (datasets' map bars, transformers' loading and
    saving bars); vLLM and the trainers get `ReportingBar` and `disable_tqdm` where the loop calls them."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
