"""The Python API, for notebooks and scripts: the CLI's commands as functions returning the records the CLI prints.

    from selfreward import load_config, iterate, evaluate, judge_eval, plan

    cfg = load_config("configs/default.yaml", ["run_name=notebook"])   # the YAML and key=value overrides
    print(plan(cfg))                     # memory and time of every stage on this machine (list of StagePlan)
    run = iterate(cfg, iterations=2)     # run or resume the loop -> RunPaths (run.root, run.iteration(k), ...)
    rows = evaluate(run)                 # every model on checkable instructions -> the rows of evaluate.json
    rows = judge_eval(run, "labels.jsonl", limit=50)   # every model as a judge vs human labels

Errors a user can mend raise `selfreward.errors.UserError` (ConfigError, DataError, ...) with the one-line
message the CLI prints. Each function imports what it needs when called, so `import selfreward` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from selfreward.config import RunConfig, load_config

if TYPE_CHECKING:
    from selfreward.artifacts import RunPaths
    from selfreward.planner import StagePlan

__all__ = ["load_config", "iterate", "evaluate", "judge_eval", "plan"]


def iterate(cfg: RunConfig, iterations: int | None = None, force: bool = False) -> RunPaths:
    """`selfreward iterate`: the plan's check, then iterations 1..N (default `cfg.iterations`) of the run; after
    each, what `eval.*` asks for (`evaluation.every_iteration`: checkable instructions, `eval.stop_if_worse`, the
    judge's accuracy on `eval.judge_labels`)."""
    from selfreward import planner
    from selfreward.evaluation.every_iteration import after_iteration
    from selfreward.loop.pipeline import iterate as run_loop

    planner.check(cfg, planner.this_machine())
    n = cfg.iterations if iterations is None else iterations
    return run_loop(cfg, n, force, after_iteration=after_iteration(cfg))


def _run(run: RunPaths | str | Path) -> tuple[RunConfig, RunPaths]:
    from selfreward.artifacts import RunPaths

    paths = run if isinstance(run, RunPaths) else RunPaths(Path(run))
    return load_config(paths.config), paths


def evaluate(run: RunPaths | str | Path, prompts: str | None = None, limit: int | None = None) -> list[dict]:
    """`selfreward evaluate RUN`: every model of the run on checkable instructions (`eval.prompts`, or an IFEval
    file); the rows written to the run's evaluate.json."""
    from selfreward.evaluation.instructions import evaluate as run_evaluate

    cfg, paths = _run(run)
    return run_evaluate(cfg, paths, None, prompts, limit)


def judge_eval(run: RunPaths | str | Path, labels: str, limit: int | None = None) -> list[dict]:
    """`selfreward judge-eval --run RUN --labels FILE`: every model of the run as a judge against human labels;
    the rows written to the run's judge_eval.json."""
    from selfreward.evaluation.judge_eval import judge_eval as run_judge_eval
    from selfreward.evaluation.judge_eval import models_to_evaluate

    cfg, paths = _run(run)
    return run_judge_eval(cfg, labels, models_to_evaluate(cfg, None, paths), paths, limit=limit)


def plan(cfg: RunConfig, gpus: int | None = None, gpu_memory: float | None = None) -> list[StagePlan]:
    """`selfreward plan`: memory per device and time of every stage, on this machine or the hardware given."""
    from selfreward import planner

    here = planner.this_machine()
    hw = planner.Hardware(here.gpus if gpus is None else gpus, here.memory_gib if gpu_memory is None else gpu_memory)
    return planner.plan(cfg, hw)[2]
