"""`selfreward push`: an iteration's pairs or model to the Hugging Face hub, or (`--dry-run DIR`) into a folder
that holds exactly what would be uploaded.

Reads  iter_K/pairs/ (datasets on disk, with its dataset card README.md) or iter_K/model/ (with its model card)
Writes the upload folder: for pairs, README.md (the card) and data/train-00000-of-00001.parquet (the hub's
       layout, which the card's `configs` names); for a model, the model folder's files as they are. A real
       push builds the same folder in a temporary place and uploads it with `HfApi.upload_folder`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

from selfreward.artifacts import RunPaths, atomic_path
from selfreward.errors import UserError

What = Literal["pairs", "model"]


class PushError(UserError):
    """Nothing to push, no token, offline, or the hub refused."""


def source_folder(run: RunPaths, k: int, what: What) -> Path:
    it = run.iteration(k)
    folder = it.pairs_dataset if what == "pairs" else it.model
    if not folder.is_dir():
        raise PushError(f"{folder}: no such folder (has iteration {k} of {run.root} made its {what}?)")
    if not (folder / "README.md").is_file():
        raise PushError(f"{folder}/README.md: no card (made by an older version; re-run that stage with --force)")
    return folder


def build_upload(run: RunPaths, k: int, what: What, dest: Path) -> list[str]:
    """Write the files to upload into `dest` (a new folder); their paths relative to it, sorted."""
    folder = source_folder(run, k, what)
    dest.mkdir(parents=True)
    if what == "model":
        for f in sorted(folder.iterdir()):
            if f.is_file():
                shutil.copy2(f, dest / f.name)
    else:
        import datasets  # heavy: only for a pairs push

        shard = dest / "data" / "train-00000-of-00001.parquet"
        shard.parent.mkdir()
        datasets.load_from_disk(str(folder)).to_parquet(str(shard))
        shutil.copy2(folder / "README.md", dest / "README.md")
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())


def push(run: RunPaths, k: int, what: What, repo: str, private: bool = False, dry_run: Path | None = None) -> str:
    """Upload iteration k's `what` to the hub repo `repo` (created if missing); with `dry_run`, write the upload
    into that folder instead (it must not exist). Returns what was done, one line."""
    if dry_run is not None:
        dry_run = Path(dry_run)
        if dry_run.exists():
            raise PushError(f"{dry_run}: exists; --dry-run writes a new folder")
        with atomic_path(dry_run) as tmp:
            files = build_upload(run, k, what, tmp)
        return f"dry run: {len(files)} files for {repo} ({what}) in {dry_run}: {', '.join(files)}"
    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise PushError("HF_HUB_OFFLINE is set: pushing needs the network (unset it, or use --dry-run DIR)")
    if get_token() is None:
        raise PushError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (or use --dry-run DIR)")
    repo_type = "dataset" if what == "pairs" else "model"
    with tempfile.TemporaryDirectory(prefix="push-") as scratch:
        files = build_upload(run, k, what, Path(scratch) / "upload")
        api = HfApi()
        try:
            api.create_repo(repo, repo_type=repo_type, private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo,
                repo_type=repo_type,
                folder_path=Path(scratch) / "upload",
                commit_message=f"selfreward: {run.root.name} iter_{k} {what}",
            )
        except Exception as e:  # network, auth, permissions: one line for the user
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise PushError(f"push to {repo} ({repo_type}) failed: {type(e).__name__}: {first}") from None
    return f"pushed {len(files)} files to {repo} ({repo_type}): {commit.commit_url}"
