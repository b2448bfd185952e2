"""Finished stages reused across runs: a content-addressed store in the cache folder (`<cache_dir>/stages/`).

A stage's outputs are fixed by its fingerprint chain (the model, the seed and every setting of it and of the stages
before it), by the digests of what it reads (files of earlier stages, model weights) and by the code that made them:
`key` joins the stage's name, both, and `code_version` (the git commit and any uncommitted change to the package, or
the installed version), so a fixed bug never comes back from the store. When a stage finishes, its declared
outputs (`runs.Stage.writes`) are published under that key; when a run reaches a stage whose key is in the store,
the outputs are restored instead of recomputed (no engine or trainer starts), and the stage's metrics and marker say
where they came from.

- Publishing is atomic and safe when two runs finish the same stage at once: each writes a private folder and
  renames it into place; the second rename finds the entry there and drops its copy (the files are equal). Private
  folders a killed run left behind are removed after a day.
- Every entry lists the sha256 of each file; a restore verifies them first, and a damaged entry is deleted and the
  stage recomputed.
- Files are hard-linked where the file system allows (stages replace their files whole, never edit them in place,
  so a link is never changed under the store), else copied.
- `reuse: false` in the config (`selfreward iterate --no-reuse`) turns the store off for a run.

Reads  and writes only `<cache_dir>/stages/<key>/` (the stage's files under their own names, and entry.json).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from selfreward.artifacts import PROJECT_ROOT, atomic_path, read_json, write_json
from selfreward.config import fingerprint

log = logging.getLogger(__name__)

ENTRY = "entry.json"
STALE_SCRATCH_S = 24 * 3600


@functools.cache
def code_version() -> str:
    """The code that makes the stages: `git:<commit>` plus a digest of any uncommitted change under selfreward/ in
    a checkout, else the installed package's version."""
    try:
        git = ["git", "-C", str(PROJECT_ROOT)]
        sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        diff = subprocess.run([*git, "diff", "HEAD", "--", "selfreward"], capture_output=True, check=True).stdout
        return f"git:{sha}" + (f"+{hashlib.sha256(diff).hexdigest()[:12]}" if diff else "")
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"selfreward=={version('selfreward')}"
        except PackageNotFoundError:
            return "unknown"


def tree_digest(path: Path) -> str | None:
    """sha256 of a file, or of a folder's relative file names and contents (sorted); None when missing."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _place(src: Path, dst: Path) -> None:
    """Hard-link (else copy) the file or folder `src` to `dst`, which must not exist."""
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(src), str(dst))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class StageStore:
    """The store under `root` (`<cache_dir>/stages`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if self.root.is_dir():
            now = time.time()
            for scratch in self.root.glob(".*"):
                if scratch.is_dir() and now - scratch.stat().st_mtime > STALE_SCRATCH_S:
                    shutil.rmtree(scratch, ignore_errors=True)

    def key(self, stage: str, chain: str, inputs: str | None) -> str:
        """The entry of stage `stage` made with fingerprint chain `chain` from inputs digest `inputs` by this code."""
        return fingerprint(stage, chain, inputs, code_version())

    def restore(self, key: str, targets: dict[str, Path]) -> dict[str, Any] | None:
        """Put entry `key`'s files at their `targets` (name -> path in the run for every output the stage declares,
        each replaced atomically) and return the entry (its `metrics` and `source`), or None when there is no such
        entry or it is damaged (then removed)."""
        folder = self.root / key
        if not (folder / ENTRY).exists():
            return None
        try:
            entry = read_json(folder / ENTRY)
            files: dict[str, str] = entry["files"]
        except (ValueError, KeyError, TypeError):
            entry, files = {}, {"": ""}  # unreadable: damaged
        if not set(files) <= set(targets) or any(tree_digest(folder / name) != d for name, d in files.items()):
            log.warning("stage store: %s is damaged or incomplete; removed, the stage runs", folder)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        for name in files:
            with atomic_path(targets[name]) as tmp:
                _place(folder / name, tmp)
        return entry

    def publish(self, key: str, outputs: dict[str, Path], metrics: dict[str, Any], source: str) -> None:
        """Store a finished stage's outputs (name -> path; missing ones left out) under `key`, once (a second
        publication of the same key finds the first in place and is dropped)."""
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            present = {name: path for name, path in outputs.items() if path.exists()}
            for name, path in present.items():
                _place(path, scratch / name)
            files = {name: tree_digest(scratch / name) for name in present}
            write_json(scratch / ENTRY, {"files": files, "metrics": metrics, "source": source})
            try:
                scratch.rename(self.root / key)
            except OSError:  # another run published the same stage first: its files are equal to ours
                pass
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
