"""Every path of a run, defined once; atomic writes; JSONL with errors that name file and line;
stage markers.

    iterations/<run>/config.yaml      resolved RunConfig of the latest invocation
    iterations/<run>/manifest.json    versions, git sha, command line, machine
    iterations/<run>/run.log          the log of every invocation
    iterations/<run>/.lock            held (flock) by the one process running the loop or a baseline on it
    iterations/<run>/iter_K/
        prompts.jsonl                 kept prompts (stage 1)
        prompts_rejected.jsonl        rejected prompts with the reason
        candidates.jsonl              N responses per prompt (stage 2)
        judgements.jsonl              K judge samples per candidate, raw text + parsed score (stage 3)
        pairs.jsonl, pairs/           preference pairs, JSONL and `datasets` on disk (stage 4)
        model/                        M_K, a transformers folder (stage 5)
        dpo_log.jsonl                 trainer logs (loss, reward margins, accuracies)
        metrics.json                  per-stage numbers, wall time and peak memory
        .stages/<stage>.json          marker: written only after a stage's outputs are complete
    iterations/<run>/iter_0/          seed SFT (config `seed_sft`): M0 -> M1 on IFT + EFT seed data
        sft_data.jsonl                the chat examples trained on (stage sft_data)
        model/, sft_log.jsonl         M1 and its trainer logs (stage sft); metrics.json, .stages/ as above
    iterations/<run>/eft.jsonl        default output of `selfreward eft build`
    iterations/<run>/expert_iter/     the expert-iteration baseline (`selfreward expert-iter`)
        round_K/                      prompts, candidates, judgements, sft_data (kept best answers), model/,
                                      sft_log, metrics.json, .stages/ (K = 1..N)
        metrics.json                  every round's metrics and the final model folder
    iterations/<run>/ppo/             the PPO baseline (`selfreward ppo`)
        config.yaml, metrics.json     resolved config; wall time, peak memory, steps, rollouts
        model/                        the final policy (fp32 safetensors + tokenizer)
        ppo_log.jsonl                 one row per PPO update
        reward_model/, reward_model_log.jsonl   `ppo.reward: model` only

A marker holds the fingerprint of the stage's config and inputs; re-running with a different
fingerprint is refused unless forced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfreward.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_file(path: str | Path) -> Path:
    """A config path: as given if it exists (relative to the working directory), else under the project root."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return PROJECT_ROOT / p


class DataError(UserError):
    """A data file that cannot be read: the message names file, line and field."""


@dataclass(frozen=True)
class IterPaths:
    """The files of one iteration (`iter_K/`)."""

    root: Path

    @property
    def prompts(self) -> Path:
        return self.root / "prompts.jsonl"

    @property
    def prompts_rejected(self) -> Path:
        return self.root / "prompts_rejected.jsonl"

    @property
    def candidates(self) -> Path:
        return self.root / "candidates.jsonl"

    @property
    def judgements(self) -> Path:
        return self.root / "judgements.jsonl"

    @property
    def anchors(self) -> Path:
        """`pairs.rejected_from: initial`: the run's first model's answers to the iteration's prompts."""
        return self.root / "anchors.jsonl"

    @property
    def meta_judgements(self) -> Path:
        """`meta_judge.enabled`: the meta-judge's verdicts on pairs of judgements."""
        return self.root / "meta_judgements.jsonl"

    @property
    def pairs(self) -> Path:
        return self.root / "pairs.jsonl"

    @property
    def judge_pairs(self) -> Path:
        """`meta_judge.enabled`: the judge-role pairs that joined the DPO data."""
        return self.root / "judge_pairs.jsonl"

    @property
    def pairs_dataset(self) -> Path:
        return self.root / "pairs"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def dpo_log(self) -> Path:
        return self.root / "dpo_log.jsonl"

    @property
    def sft_data(self) -> Path:
        return self.root / "sft_data.jsonl"

    @property
    def sft_log(self) -> Path:
        return self.root / "sft_log.jsonl"

    @property
    def ppo_log(self) -> Path:
        """`selfreward reason`'s PPO rounds: one row per update (as the PPO baseline's ppo_log.jsonl)."""
        return self.root / "ppo_log.jsonl"

    @property
    def reward_model_log(self) -> Path:
        """`selfreward reason`'s outcome reward model: RewardTrainer's log history."""
        return self.root / "reward_model_log.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def stages(self) -> Path:
        return self.root / ".stages"

    def marker(self, stage: str) -> Path:
        return self.stages / f"{stage}.json"

    def checkpoints(self, stage: str) -> Path:
        """checkpoints/<stage>/: the trainer's checkpoints while `stage` (sft, dpo) trains, removed when its
        model is saved; a killed stage resumes from the newest complete one (`resume_checkpoint`)."""
        return self.root / "checkpoints" / stage


@dataclass(frozen=True)
class PPOPaths:
    """The files of the PPO baseline (`iterations/<run>/ppo/`)."""

    root: Path

    @property
    def config(self) -> Path:
        """The resolved RunConfig of the PPO run."""
        return self.root / "config.yaml"

    @property
    def model(self) -> Path:
        """The final policy, fp32 safetensors + tokenizer."""
        return self.root / "model"

    @property
    def log(self) -> Path:
        """One row per PPO update: rewards, KL, entropy, losses, clip fractions, explained variance."""
        return self.root / "ppo_log.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def reward_model(self) -> Path:
        """`ppo.reward: model`: the reward model trained on an iteration's pairs."""
        return self.root / "reward_model"

    @property
    def reward_model_log(self) -> Path:
        return self.root / "reward_model_log.jsonl"


@dataclass(frozen=True)
class RunPaths:
    """The files of one run (`iterations/<run>/`)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def judge_eval(self) -> Path:
        """One row per (model, labels file): agreement with human labels (`selfreward judge-eval`)."""
        return self.root / "judge_eval.json"

    @property
    def judge_eval_dir(self) -> Path:
        """Every item's judge scores and samples, a file per judge_eval.json row (`judge_eval_items`)."""
        return self.root / "judge_eval"

    def judge_eval_items(self, model: str, labels: str, mode: str, samples: int) -> Path:
        """The per-item file of one judge_eval.json row: judge_eval/<model>__<labels>__<mode>-k<K>.jsonl
        (the judge mode and K are in the name: a sampled and a probabilities run keep separate files)."""
        return self.judge_eval_dir / f"{slug(model)}__{slug(labels)}__{mode}-k{samples}.jsonl"

    @property
    def compare(self) -> Path:
        """One row per head-to-head comparison (`selfreward compare`)."""
        return self.root / "compare.json"

    @property
    def methods(self) -> Path:
        """One row per method: self-rewarding DPO, PPO, expert iteration (`selfreward compare-methods`)."""
        return self.root / "methods.json"

    @property
    def evaluate(self) -> Path:
        """`selfreward evaluate`: one row per model and prompt file (accuracy on checkable instructions)."""
        return self.root / "evaluate.json"

    @property
    def evaluate_dir(self) -> Path:
        """Each model's answers to the constraint prompts with the checkers' verdicts (answers/<label>.jsonl)."""
        return self.root / "evaluate"

    @property
    def compare_dir(self) -> Path:
        """Answers per model (answers/<label>.jsonl) and per comparison verdicts (<a>_vs_<b>.jsonl)."""
        return self.root / "compare"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def invocations(self) -> Path:
        """<UTC time>-<pid>.json per invocation that ran a stage: its resolved config and manifest."""
        return self.root / "invocations"

    @property
    def tracking(self) -> Path:
        """TensorBoard event files (`tracking.report_to: tensorboard`): <stage>/ per trainer (iter_1/dpo,
        iter_0/sft, ppo, ...) and loop/ for the loop's own metrics, the iteration as the step."""
        return self.root / "tracking"

    @property
    def lock(self) -> Path:
        """flock-ed by the process that runs the loop or a baseline on this run; holds its PID and command."""
        return self.root / ".lock"

    @property
    def eft_data(self) -> Path:
        return self.root / "eft.jsonl"

    @property
    def ppo(self) -> PPOPaths:
        """ppo/: the PPO baseline (`selfreward ppo`)."""
        return PPOPaths(self.root / "ppo")

    def iteration(self, k: int) -> IterPaths:
        """iter_K/; K = 0 is the seed SFT, K >= 1 the loop's iterations."""
        return IterPaths(self.root / f"iter_{k}")

    def iterations(self) -> list[int]:
        """Numbers of the loop's iteration folders present (K >= 1; iter_0 is the seed SFT), sorted."""
        if not self.root.exists():
            return []
        found = (int(p.name[5:]) for p in self.root.glob("iter_*") if p.name[5:].isdigit())
        return sorted(k for k in found if k >= 1)

    @property
    def expert_iter(self) -> Path:
        """expert_iter/: the expert-iteration baseline (`selfreward expert-iter`)."""
        return self.root / "expert_iter"

    @property
    def expert_iter_metrics(self) -> Path:
        """Every round's metrics and the final model folder."""
        return self.expert_iter / "metrics.json"

    @property
    def reason(self) -> Path:
        """reason/: problems with checkable answers (`selfreward reason`): problems_train.jsonl,
        problems_test.jsonl, init/ (the start model), <method>/round_K/, eval/, reason.json."""
        return self.root / "reason"

    def expert_round(self, k: int) -> IterPaths:
        """expert_iter/round_K/ (K >= 1): prompts, candidates, judgements, sft_data, model/, sft_log, metrics."""
        return IterPaths(self.expert_iter / f"round_{k}")


def slug(text: str) -> str:
    """A file-name-safe form of a label or model name: `/tmp/runs/model` -> `tmp-runs-model`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


# --------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (inside a fresh `.NAME.xxxxxxxx/` folder); on success flush it to
    disk and rename it over `path` (file or folder), then flush the parent folder so the rename is durable.
    A folder it replaces is first moved into that temporary folder, so no fixed `.NAME.old` name is shared."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp = scratch / path.name
    try:
        yield tmp
        fsync_tree(tmp)
        if path.is_dir() and not path.is_symlink():
            old = scratch / ".old"
            path.rename(old)
            try:
                tmp.rename(path)
            except BaseException:
                old.rename(path)
                raise
        else:
            os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fsync_tree(path: Path) -> None:
    """Flush a file, or every file and folder under a folder, to disk (symlinks and missing paths skipped)."""
    if path.is_symlink() or not path.exists():
        return
    if not path.is_dir():
        _fsync(path)
        return
    for root, _, files in os.walk(path):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                _fsync(Path(root, name))
        _fsync(Path(root))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Names of temporaries a killed process can leave next to its outputs: `atomic_path`'s `.NAME.xxxxxxxx/`
# (8 characters of tempfile's alphabet), the `.NAME.old` folder of earlier versions, and the trainers'
# scratch folders `tempfile.TemporaryDirectory(prefix="dpo-" | "sft-" | "reward-model-")`.
_TEMP_NAME = re.compile(r"\.[^/]+\.(?:[a-z0-9_]{8}|old)|(?:dpo|sft|reward-model)-[a-z0-9_]{8}")


def file_digest(path: str | Path) -> str | None:
    """sha256 of a file's bytes; None when it does not exist."""
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def model_digest(model: str | Path, chunks: int = 16, chunk_bytes: int = 1 << 16) -> str:
    """A cheap digest of a model folder's weights: for each *.safetensors file its size, its first MiB (the
    header) and `chunks` evenly spaced blocks of `chunk_bytes`, plus config.json; ~2 MB read for a 135M model.
    Training changes every block, so a retrained model gets a new digest. A name that is no folder (a hub id)
    is its own digest."""
    folder = Path(model)
    if not folder.is_dir():
        return f"name:{model}"
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        if not f.is_file():
            continue
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            for i in range(chunks):
                fh.seek(size * i // chunks)
                h.update(fh.read(chunk_bytes))
    return h.hexdigest()


def resume_checkpoint(folder: Path, key: str) -> Path | None:
    """The trainer checkpoint to resume from in `folder` (a trainer's `output_dir`), or None to start at step 0.

    `key` names the training (config, start model, data): checkpoints made for another key are removed, as
    are incomplete ones (a kill while saving: no readable trainer_state.json, which transformers writes
    last); the newest complete one is returned."""
    folder = Path(folder)
    key_file = folder / "key.json"
    if folder.exists() and (not key_file.is_file() or json.loads(key_file.read_text() or "{}").get("key") != key):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not key_file.is_file():
        write_json(key_file, {"key": key})
    complete = []
    for ckpt in folder.glob("checkpoint-*"):
        try:
            step = int(ckpt.name.split("-", 1)[1])
            json.loads((ckpt / "trainer_state.json").read_text())
        except (ValueError, OSError):
            shutil.rmtree(ckpt, ignore_errors=True)
            continue
        complete.append((step, ckpt))
    return max(complete)[1] if complete else None


def stale_temps(root: Path) -> list[Path]:
    """Temporaries under `root` (see `_TEMP_NAME`) that a killed run left behind; only safe to remove while
    no other process writes into `root` (`runs.open_run` holds the run's lock)."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            if _TEMP_NAME.fullmatch(name):
                found.append(Path(folder, name))
        dirs[:] = [d for d in dirs if not _TEMP_NAME.fullmatch(d)]
    return sorted(found)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically; returns the number written."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_utf8(path: Path) -> str:
    """The text of a UTF-8 file; DataError naming file and line if it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1)
        raise DataError(f"{path}:{lineno}: {_not_utf8(data[e.start], column)}") from None


def _not_utf8(byte: int, column: int) -> str:
    """The message of a line that is not UTF-8: the offending byte and its (0-based) column."""
    return f"not UTF-8 text (byte {byte:#04x} at column {column + 1}; save the file as UTF-8)"


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON: {e.msg} (line {e.lineno})") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line raises DataError naming file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a JSONL file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: {_not_utf8(raw[e.start], e.start)}") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Read a JSONL file; a bad line raises DataError naming file, line and field. Blank lines are skipped."""
    rows = []
    for lineno, row in iter_jsonl(path):
        for key in required:
            if key not in row:
                raise DataError(f"{path}:{lineno}: missing field '{key}'")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- stage markers


def read_marker(paths: IterPaths, stage: str) -> dict[str, Any] | None:
    marker = paths.marker(stage)
    return read_json(marker) if marker.exists() else None


def write_marker(paths: IterPaths, stage: str, fingerprint: str, **info: Any) -> None:
    write_json(paths.marker(stage), {"stage": stage, "fingerprint": fingerprint, **info})


def clear_marker(paths: IterPaths, stage: str) -> None:
    paths.marker(stage).unlink(missing_ok=True)
