"""Files users give or we ship, read and checked in one place; a bad row is a `DataError` naming
file:line and the field.

- Prompt files (`load_prompt_file`): JSONL rows with `text` (an iteration's prompts.jsonl, the held-out
  prompts) or `instruction` (the seed format), for compare, PPO, expert iteration and the benchmark.
- Seed instructions (`load_instructions`, `load_seed_pool`): prompts/seed/instructions.jsonl, one
  `{id, category, instruction, response}` per line: the IFT data and the few-shot pool of prompt writing.
- Chat examples (`load_examples`): SFT data, `{"messages": [...]}` per line ending in the assistant's turn.
- Human labels (`load_labels`): one `LabelledItem(prompt, responses, human_ranks)` per row; rank 1 is
  best and equal ranks are a human tie (only the order of the ranks matters). The format is detected
  from the keys of the first non-blank line and every line is checked against it:

    pairwise   {"prompt", "response_a", "response_b", "human_preference": "a" | "b" | "tie"}
               -> responses [a, b], ranks [1, 2] / [2, 1] / [1, 1]
    ranked     {"prompt", "responses": [str, ...], "human_ranks": [int, ...]}
               -> as given (same length, at least 2, positive integers)
    hh-rlhf    {"chosen", "rejected"}: two transcripts "\\n\\nHuman: ...\\n\\nAssistant: ..." that
               share everything up to their last "\\n\\nAssistant:". The prompt is that shared
               dialogue without the final "\\n\\nAssistant:" marker, outer whitespace stripped
               ("Human: q1\\n\\nAssistant: a1\\n\\nHuman: q2"); responses [chosen's final turn,
               rejected's final turn] stripped; ranks [1, 2].

A name that is not an existing path is read from the Hugging Face hub: `name[:split]` (split
`test` when omitted) via `datasets.load_dataset`, rows parsed by the same code. Unless it cannot be
a hub name (a `.json`/`.jsonl` suffix, a path such as `../labels` or `a/b/c`) or the hub is off
(`HF_HUB_OFFLINE=1`): then it is a mistyped path, a DataError.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfreward.artifacts import DataError, iter_jsonl, project_file, read_jsonl
from selfreward.records import Prompt

# --------------------------------------------------------------------------- prompts and seed data


def load_prompt_file(path: str | Path) -> list[Prompt]:
    """Prompts from JSONL, for every stage that answers a prompt file (compare, PPO, expert iteration): rows
    with `text` (an iteration's prompts.jsonl, the held-out prompts) or `instruction` (the seed format); the id
    is `prompt_id` or `id`, else the row's position. Errors name file:line and the field."""
    path = project_file(path)
    prompts: list[Prompt] = []
    ids: set[str] = set()
    for lineno, row in iter_jsonl(path):
        key = "instruction" if "instruction" in row and "text" not in row else "text"
        text = row.get(key)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{lineno}: field '{key}' must be a non-empty string (a prompt)")
        pid = str(row.get("prompt_id") or row.get("id") or f"p{len(prompts)}")
        if pid in ids:
            raise DataError(f"{path}:{lineno}: duplicate prompt id '{pid}'")
        ids.add(pid)
        prompts.append(Prompt(pid, text, str(row.get("source", path.name))))
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def load_seed_pool(path: str) -> list[str]:
    """Instructions of the seed file (JSONL with an `instruction` field)."""
    return [p.text for p in load_prompt_file(path)]


@dataclass
class SeedInstruction:
    """One line of `seed_data.instructions`."""

    id: str
    category: str
    instruction: str
    response: str
    """Reference response (the IFT target)."""


def typed_field(row: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in row:
        raise DataError(f"{where}: missing field '{key}'")
    value = row[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: field '{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def load_instructions(path: str | Path) -> dict[str, SeedInstruction]:
    """The seed instructions by id; a missing or mistyped field or a duplicate id is a DataError naming file:line."""
    path = project_file(path)
    out: dict[str, SeedInstruction] = {}
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        item = SeedInstruction(
            *(typed_field(row, key, str, where) for key in ("id", "category", "instruction", "response"))
        )
        if item.id in out:
            raise DataError(f"{where}: duplicate id '{item.id}'")
        out[item.id] = item
    return out


# --------------------------------------------------------------------------- chat examples (SFT data)


def load_examples(path: str | Path) -> list[dict]:
    """Chat examples from JSONL: `messages` must be user/assistant turns ending with the assistant's."""
    path = project_file(path)
    rows = read_jsonl(path, ["messages"])
    for lineno, row in enumerate(rows, 1):
        check_messages(row["messages"], f"{path}: example {lineno}")
    return rows


def check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or len(messages) < 2:
        raise DataError(f"{where}: field 'messages' must be a list of at least 2 messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field 'messages' must hold {{'role': str, 'content': str}} objects")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's (it is what is trained)")


# --------------------------------------------------------------------------- human labels


ASSISTANT_TURN = "\n\nAssistant:"
PAIRWISE, RANKED, HH_RLHF = "pairwise", "ranked", "hh-rlhf"
_REQUIRED = {
    PAIRWISE: ("prompt", "response_a", "response_b", "human_preference"),
    RANKED: ("prompt", "responses", "human_ranks"),
    HH_RLHF: ("chosen", "rejected"),
}
_PREFERENCE_RANKS = {"a": [1, 2], "b": [2, 1], "tie": [1, 1]}


@dataclass
class LabelledItem:
    """One prompt with responses ranked by humans."""

    prompt: str
    responses: list[str]
    human_ranks: list[int]
    """One per response; 1 is best, equal ranks are a tie. Only the order matters."""


# --------------------------------------------------------------------------- loading


def load_labels(path_or_name: str) -> list[LabelledItem]:
    """A human-label file (pairwise, ranked or hh-rlhf JSONL) or, if no such path, a hub dataset `name[:split]`."""
    path = Path(path_or_name)
    if path.exists():
        return read_label_file(path)
    name, _, split = path_or_name.partition(":")
    if path.suffix in (".jsonl", ".json") or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise DataError(f"{path}: no such file (and not a hub dataset name)")
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise DataError(f"{path}: no such file (and not a hub dataset name: HF_HUB_OFFLINE=1 turns the hub off)")
    return load_hub_labels(name, split or "test")


def read_label_file(path: Path) -> list[LabelledItem]:
    """Read a JSONL label file; the first non-blank line decides the format, every line is checked."""
    items: list[LabelledItem] = []
    fmt: str | None = None
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if fmt is None:
            fmt = detect_format(row, where)
        items.append(parse_row(row, fmt, where))
    if not items:
        raise DataError(f"{path}: no rows")
    return items


def load_hub_labels(name: str, split: str = "test") -> list[LabelledItem]:
    """Rows of a hub dataset split (needs network or a local `datasets` cache), parsed like file lines."""
    import datasets

    ds = datasets.load_dataset(name, split=split)
    items: list[LabelledItem] = []
    fmt: str | None = None
    for i, row in enumerate(ds):
        where = f"{name}[{split}] row {i}"
        if fmt is None:
            fmt = detect_format(row, where)
        items.append(parse_row(row, fmt, where))
    if not items:
        raise DataError(f"{name}[{split}]: no rows")
    return items


def detect_format(row: dict[str, Any], where: str) -> str:
    """`pairwise`, `ranked` or `hh-rlhf` from a row's keys."""
    keys = set(row)
    if keys & {"response_a", "response_b", "human_preference"}:
        return PAIRWISE
    if keys & {"responses", "human_ranks"}:
        return RANKED
    if keys & {"chosen", "rejected"}:
        return HH_RLHF
    raise DataError(
        f"{where}: unknown label format: expected keys response_a/response_b/human_preference, "
        f"responses/human_ranks or chosen/rejected, got {_show(sorted(keys))}"
    )


def parse_row(row: dict[str, Any], fmt: str, where: str) -> LabelledItem:
    """Check one row of format `fmt` and turn it into a LabelledItem; `where` prefixes errors."""
    for key in _REQUIRED[fmt]:
        if key not in row:
            raise DataError(f"{where}: missing field '{key}'")
    if fmt == PAIRWISE:
        prompt, a, b = (_string(row, key, where) for key in ("prompt", "response_a", "response_b"))
        pref = row["human_preference"]
        if not isinstance(pref, str) or pref not in _PREFERENCE_RANKS:
            raise DataError(f'{where}: field \'human_preference\' must be "a", "b" or "tie", got {_show(pref)}')
        return LabelledItem(prompt, [a, b], list(_PREFERENCE_RANKS[pref]))
    if fmt == RANKED:
        prompt = _string(row, "prompt", where)
        responses, ranks = row["responses"], row["human_ranks"]
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise DataError(f"{where}: field 'responses' must be a list of strings, got {_show(responses)}")
        if len(responses) < 2:
            raise DataError(f"{where}: field 'responses' must hold at least 2 responses, got {len(responses)}")
        if not isinstance(ranks, list) or not all(_positive_int(r) for r in ranks):
            raise DataError(f"{where}: field 'human_ranks' must be a list of positive integers, got {_show(ranks)}")
        if len(ranks) != len(responses):
            raise DataError(f"{where}: field 'human_ranks' has {len(ranks)} ranks for {len(responses)} responses")
        return LabelledItem(prompt, list(responses), list(ranks))
    prefixes, finals = [], []
    for key in ("chosen", "rejected"):
        text = _string(row, key, where)
        cut = text.rfind(ASSISTANT_TURN)
        if cut < 0:
            raise DataError(f"{where}: field '{key}' has no {_show(ASSISTANT_TURN)} turn")
        prefixes.append(text[:cut])
        finals.append(text[cut + len(ASSISTANT_TURN) :].strip())
    if prefixes[0] != prefixes[1]:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' differ before their final assistant turn")
    return LabelledItem(prefixes[0].strip(), finals, [1, 2])


def _string(row: dict[str, Any], key: str, where: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {_show(value)}")
    return value


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _show(value: Any, limit: int = 80) -> str:
    """A value as one line of JSON, cut to `limit` characters."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
