"""`tracking.report_to` wandb, mlflow and trackio, each offline: one tiny iteration per tracker, then its own
store read back (wandb's offline run files, an MLflow SQLite store, trackio's local database). The loop's metrics
must land under `<run>/loop` at the iteration's step, and the trainers' losses under `<run>/iter_K/<stage>`.
Skipped where the tracker is not installed (`make install-trackers`; CI installs them)."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfreward.artifacts import RunPaths

ROOT = Path(__file__).resolve().parent.parent

# What each tracker needs to stay on this machine, with {tmp} the test's folder.
OFFLINE = {
    "wandb": {"WANDB_MODE": "offline", "WANDB_DIR": "{tmp}", "WANDB_SILENT": "true"},
    "mlflow": {"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/mlflow.db"},
    "trackio": {"TRACKIO_DIR": "{tmp}/trackio"},
}

Logged = dict[str, dict[str, dict[int, float]]]  # run name -> metric -> step -> value


# A shell's own tracker settings that would send the runs elsewhere or break them.
CLEARED = ("WANDB_PROJECT", "WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DISABLED", "TRACKIO_SPACE_ID",
           "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_NESTED_RUN")  # fmt: skip


def offline_env(name: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return env | {k: v.format(tmp=tmp) for k, v in OFFLINE[name].items()} | {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module", params=list(OFFLINE))
def tracked(request, tmp_path_factory, tiny_model: Path) -> tuple[str, Path, RunPaths]:
    """One tiny iteration with `tracking.report_to=<tracker>`, run as a user runs it: `selfreward iterate` in its
    own process with the tracker's offline settings in its environment (trackio reads TRACKIO_DIR once, when it is
    first imported, and trl imports it with itself)."""
    name = request.param
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (make install-trackers)")
    tmp = tmp_path_factory.mktemp(name)
    overrides = [f"model={tiny_model}", f"output_dir={tmp}", f"run_name=trk-{name}", "iterations=1", "reuse=false"]
    cmd = [sys.executable, "-m", "selfreward", "iterate", "--config", str(ROOT / "configs" / "tiny.yaml"), *overrides]
    with open(tmp / "iterate.log", "w") as out:
        done = subprocess.run([*cmd, f"tracking.report_to={name}"], cwd=ROOT, env=offline_env(name, tmp), stdout=out,
                              stderr=subprocess.STDOUT)  # fmt: skip
    assert done.returncode == 0, (tmp / "iterate.log").read_text()[-3000:]
    return name, tmp, RunPaths(tmp / f"trk-{name}")


def logged(tracker: str, tmp: Path, project: str) -> Logged:
    """Every number the tracker holds for `project`, read from its own store."""
    return {"wandb": wandb_logged, "mlflow": mlflow_logged, "trackio": trackio_logged}[tracker](tmp, project)


def wandb_records(path: Path) -> Iterator:
    """The records of a wandb offline run file: a `:W&B` header, then LevelDB-log records in 32 KiB blocks (a
    7-byte header each: checksum, length, type full/first/middle/last), each a `Record` protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # the rest of a block is padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


def wandb_logged(tmp: Path, project: str) -> Logged:
    out: Logged = defaultdict(lambda: defaultdict(dict))
    for path in sorted((tmp / "wandb").glob("offline-run-*/run-*.wandb")):
        name = None
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                assert record.run.project == project
                name = record.run.display_name
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                step = items.get("train/global_step", record.history.step.num)
                for key, value in items.items():
                    if isinstance(value, int | float) and not key.startswith("_"):
                        out[name][key][int(step)] = float(value)
    return out


def mlflow_logged(tmp: Path, project: str) -> Logged:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=OFFLINE["mlflow"]["MLFLOW_TRACKING_URI"].format(tmp=tmp))
    experiment = client.get_experiment_by_name(project)
    assert experiment is not None, f"no MLflow experiment {project}"
    out: Logged = defaultdict(lambda: defaultdict(dict))
    for run in client.search_runs([experiment.experiment_id]):
        for key in run.data.metrics:
            for m in client.get_metric_history(run.info.run_id, key):
                out[run.info.run_name][key][m.step] = m.value
    return out


def trackio_logged(tmp: Path, project: str) -> Logged:
    read = (
        "import json, sys\n"
        "from trackio.sqlite_storage import SQLiteStorage as S\n"
        "print(json.dumps({r: S.get_logs(sys.argv[1], r) for r in S.get_runs(sys.argv[1])}, default=str))"
    )
    done = subprocess.run([sys.executable, "-c", read, project], env=offline_env("trackio", tmp), capture_output=True,
                          text=True, check=True)  # fmt: skip
    out: Logged = defaultdict(lambda: defaultdict(dict))
    for name, rows in json.loads(done.stdout.strip().splitlines()[-1]).items():
        for row in rows:
            step = row.get("train/global_step", row["step"])  # a trainer's own step, else the one logged
            for key, value in row.items():
                if isinstance(value, int | float) and key != "step":
                    out[name][key][int(step)] = float(value)
    return out


def test_the_loops_metrics_land_under_the_run_at_the_iteration_step(tracked) -> None:
    tracker, tmp, run = tracked
    got = logged(tracker, tmp, run.root.name)
    loop = got[f"{run.root.name}/loop"]
    metrics = json.loads(run.iteration(1).metrics.read_text())["stages"]
    assert loop["pairs/pairs"] == {1: metrics["pairs"]["pairs"]}
    assert loop["prompts/prompts_kept"] == {1: metrics["prompts"]["prompts_kept"]}
    assert loop["dpo/optimizer_steps"] == {1: metrics["dpo"]["optimizer_steps"]}
    assert loop["judgements/mean_digit_mass"][1] == pytest.approx(metrics["judgements"]["mean_digit_mass"])


def test_the_trainers_losses_land_under_their_stage(tracked) -> None:
    tracker, tmp, run = tracked
    got = logged(tracker, tmp, run.root.name)
    steps = json.loads(run.iteration(1).metrics.read_text())["stages"]["dpo"]["optimizer_steps"]
    for stage, wanted in ((f"{run.root.name}/iter_1/dpo", steps), (f"{run.root.name}/iter_0/sft", None)):
        assert stage in got, f"{tracker} has no run {stage}: {sorted(got)}"
        loss = got[stage].get("train/loss") or got[stage].get("loss")  # mlflow keeps the trainer's own key
        assert loss, f"{tracker}'s {stage} has no loss: {sorted(got[stage])}"
        assert all(v == v and v > 0 for v in loss.values())  # finite, positive: a real loss
        if wanted is not None:
            assert sorted(loss) == list(range(1, wanted + 1))
