"""Finished stages reused across runs: a content-addressed store in the cache folder (`<cache_dir>/stages/`).

A stage's outputs are fixed by its fingerprint chain (the model, the seed and every setting of it and of the stages
before it) and by the digests of what it reads (files of earlier stages, model weights): `runs.StageRunner` keys
them by both (`key`). When a stage finishes, its declared outputs (`runs.Stage.writes`) are published under that
key; when a run reaches a stage whose key is in the store, the outputs are restored instead of recomputed (no engine
or trainer starts), and the stage's metrics and marker say where they came from.

- Publishing is atomic and safe when two runs finish the same stage at once: each writes a private folder and
  renames it into place; the second rename finds the entry there and drops its copy (the files are equal).
- Every entry lists the sha256 of each file; a restore verifies them first, and a damaged entry is deleted and the
  stage recomputed.
- Files are hard-linked where the file system allows (stages replace their files whole, never edit them in place,
  so a link is never changed under the store), else copied.
- `reuse: false` in the config (`selfreward iterate --no-reuse`) turns the store off for a run.

Reads  and writes only `<cache_dir>/stages/<key>/` (the stage's files under their own names, and entry.json).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from selfreward.artifacts import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

ENTRY = "entry.json"


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

    def restore(self, key: str, targets: dict[str, Path]) -> dict[str, Any] | None:
        """Put entry `key`'s files at their `targets` (name -> path in the run for every output the stage declares,
        each replaced atomically) and return the entry (its `metrics` and `source`), or None when there is no such
        entry or it is damaged (then removed)."""
        folder = self.root / key
        if not (folder / ENTRY).exists():
            return None
        entry = read_json(folder / ENTRY)
        files: dict[str, str] = entry.get("files", {})
        if not set(files) <= set(targets) or any(tree_digest(folder / name) != d for name, d in files.items()):
            log.warning("stage store: %s is damaged or incomplete; removed, the stage runs", folder)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        for name in files:
            with atomic_path(targets[name]) as tmp:
                _place(folder / name, tmp)
        return entry

    def publish(self, key: str, outputs: dict[str, Path], metrics: dict[str, Any], source: str) -> None:
        """Store a finished stage's outputs (name -> path; missing ones left out) under `key`, once."""
        if (self.root / key / ENTRY).exists():
            return
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
