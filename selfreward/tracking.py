"""Experiment tracking (`tracking.report_to`): the trainers report through transformers' integrations, and
the loop's own numbers go to the same tracker, all under the run's name.

Reads  nothing itself: callers hand it numbers (an iteration's metrics.json, compare and judge-eval rows,
       PPO's per-update statistics)
Writes with `tensorboard`, iterations/<run>/tracking/: <stage>/ per trainer (iter_0/sft, iter_1/dpo,
       ppo/reward_model, ...) from transformers' TensorBoardCallback, and loop/ (the loop's metrics, the
       iteration as the step), ppo/ (PPO's updates), eval/ (win rates, judge accuracy). `wandb`, `trackio`
       and `mlflow` log to wherever their package is set up to, one run per stage named `<run>/<stage>`
       in the project (experiment) `<run>` unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say otherwise.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfreward.artifacts import RunPaths
from selfreward.config import RunConfig


@dataclass(frozen=True)
class Tracker:
    """Where one run reports: `report_to` is `none` or a transformers integration name."""

    report_to: str = "none"
    log_dir: Path = Path("tracking")
    run_name: str = "run"

    @classmethod
    def of(cls, cfg: RunConfig) -> Tracker:
        """The tracker of the run `cfg.run_dir`."""
        return cls(cfg.tracking.report_to, RunPaths(cfg.run_dir).tracking, cfg.run_name)

    @property
    def on(self) -> bool:
        return self.report_to != "none"

    def trainer_args(self, stage: str) -> dict[str, Any]:
        """TrainingArguments fields for the trainer of `stage`: `report_to`, `run_name` <run>/<stage>, `project`."""
        return {"report_to": self.report_to, "run_name": f"{self.run_name}/{stage}", "project": self.run_name}

    @contextmanager
    def trainer_env(self, stage: str) -> Iterator[None]:
        """Around building a trainer (TensorBoard's callback reads its folder from the environment then) and
        around `trainer.train()` (wandb and MLflow read their project when training starts). Restored after."""
        wanted = {"TENSORBOARD_LOGGING_DIR": str(self.log_dir / stage)}
        for key in ("WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME"):
            wanted[key] = os.environ.get(key, self.run_name)
        saved = {key: os.environ.get(key) for key in wanted}
        os.environ.update(wanted if self.on else {})
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def log(self, stage: str, scalars: dict[str, float], step: int, histograms: dict[str, list[float]] | None = None):
        """Numbers of `stage` (loop, ppo, eval) at `step`; non-finite values are left out."""
        if not self.on:
            return
        scalars = {k: float(v) for k, v in scalars.items() if math.isfinite(v)}
        histograms = {k: v for k, v in (histograms or {}).items() if v}
        if self.report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # heavy: only when tracking

            with SummaryWriter(log_dir=str(self.log_dir / stage)) as writer:
                for key, value in scalars.items():
                    writer.add_scalar(key, value, step)
                for key, values in histograms.items():
                    import numpy as np

                    writer.add_histogram(key, np.asarray(values, dtype=float), step)
        elif self.report_to == "wandb":
            import wandb

            run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", self.run_name),
                name=f"{self.run_name}/{stage}",
                id=_run_id(self.run_name, stage),
                resume="allow",
            )
            run.log({**scalars, **{k: wandb.Histogram(v) for k, v in histograms.items()}}, step=step)
            run.finish()
        elif self.report_to == "mlflow":
            import mlflow

            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", self.run_name))
            runs = mlflow.search_runs(filter_string=f"tags.mlflow.runName = '{self.run_name}/{stage}'")
            run_id = runs["run_id"].iloc[0] if len(runs) else None
            with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"{self.run_name}/{stage}"):
                mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in scalars.items()}, step=step)
        elif self.report_to == "trackio":
            import trackio

            trackio.init(project=self.run_name, name=f"{self.run_name}/{stage}", resume="allow")
            trackio.log(scalars, step=step)
            trackio.finish()


def _run_id(run_name: str, stage: str) -> str:
    return hashlib.sha1(f"{run_name}/{stage}".encode()).hexdigest()[:16]


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a metrics dict as `a/b/c` keys (booleans and text left out; a list of numbers,
    e.g. a histogram's counts, as `key/0`, `key/1`, ...)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            out.update({f"{name}/{i}": float(v) for i, v in enumerate(value)})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def log_iteration(tracker: Tracker, k: int, metrics: dict[str, Any]) -> None:
    """An iteration's metrics.json at step k: every stage's numbers (prompt funnel by reason, judge score
    histogram and digit mass, pair funnel, DPO summary and shift, times), and the judge scores as a
    histogram."""
    scalars = flatten(metrics.get("stages", {}))
    scalars.update(flatten({"engine": metrics.get("engine") or {}}))
    scalars.update({k_: float(metrics[k_]) for k_ in ("wall_s", "peak_rss_gib") if k_ in metrics})
    counts = (metrics.get("stages", {}).get("judgements") or {}).get("score_histogram") or []
    scores = [float(score) for score, n in enumerate(counts) for _ in range(int(n))]
    tracker.log("loop", scalars, k, {"judgements/scores": scores})
