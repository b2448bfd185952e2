"""Constraint prompt files: IFEval's public input format, read and checked; our held-out set, made by our generator.

Format (IFEval's `input_data.jsonl`), one object a line:

    {"key": 1000, "prompt": "...", "instruction_id_list": ["punctuation:no_comma", ...],
     "kwargs": [{}, ...]}

`kwargs` is a list parallel to `instruction_id_list`, each a dict of the arguments that instruction uses
(`checkers.ARGUMENTS`); copies that give every argument name with null for the unused ones are accepted (nulls
are dropped). `key` is optional (the line number stands in). A malformed row, an unknown instruction id, a
missing or mistyped argument is a `DataError` naming file, line and field. Extra fields are kept out of the way
(our own file adds `base`, the instruction before the constraints).

The held-out set `prompts/eval/constraints.jsonl` is `held_out_set()`: base instructions built from our own
lists of forms and subjects (none is a seed instruction or a held-out compare prompt), each with 1-3 generated
constraints, seeded. `selfreward constraints write-eval` rewrites it; a test checks that the shipped file is
exactly what the generator makes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from selfreward.artifacts import DataError, iter_jsonl, project_file, write_jsonl
from selfreward.constraints.checkers import ARGUMENTS, CHECKERS, RELATION_ARGUMENTS, RELATIONS
from selfreward.constraints.generator import add_constraints
from selfreward.records import Prompt

HELD_OUT = "prompts/eval/constraints.jsonl"
HELD_OUT_SEED = 20261207
HELD_OUT_SIZE = 240


def load_constraint_prompts(path: str | Path) -> list[Prompt]:
    """Prompts with checkable instructions from an IFEval-format file (module docstring)."""
    path = project_file(path)
    prompts: list[Prompt] = []
    keys: set[str] = set()
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'prompt' must be a non-empty string")
        ids = row.get("instruction_id_list")
        if not isinstance(ids, list) or not ids:
            raise DataError(f"{where}: field 'instruction_id_list' must be a non-empty list of instruction ids")
        kwargs = row.get("kwargs")
        if not isinstance(kwargs, list) or len(kwargs) != len(ids):
            raise DataError(
                f"{where}: field 'kwargs' must be a list of {len(ids)} objects, one per instruction_id_list entry"
            )
        checked = [_arguments(ids, kwargs, i, where) for i in range(len(ids))]
        key = str(row.get("key", lineno))
        if key in keys:
            raise DataError(f"{where}: field 'key': duplicate key {key}")
        keys.add(key)
        prompts.append(Prompt(key, text, path.name, list(ids), checked, str(row.get("base") or "")))
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def _arguments(ids: list[Any], kwargs: list[Any], i: int, where: str) -> dict[str, Any]:
    instruction = ids[i]
    if not isinstance(instruction, str) or instruction not in CHECKERS:
        raise DataError(f"{where}: field 'instruction_id_list[{i}]': unknown instruction id {instruction!r}")
    given = kwargs[i]
    if not isinstance(given, dict):
        raise DataError(f"{where}: field 'kwargs[{i}]' must be an object, got {type(given).__name__}")
    wanted = ARGUMENTS.get(instruction, {})
    out: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in wanted:
            raise DataError(f"{where}: field 'kwargs[{i}].{name}' is not an argument of {instruction}")
        out[name] = value
    for name, kind in wanted.items():
        field = f"kwargs[{i}].{name}"
        if name not in out:
            raise DataError(f"{where}: field '{field}' is missing ({instruction} needs it)")
        value = out[name]
        if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise DataError(f"{where}: field '{field}' must be a non-negative integer, got {value!r}")
        if kind is str and (not isinstance(value, str) or not value.strip()):
            raise DataError(f"{where}: field '{field}' must be a non-empty string, got {value!r}")
        if kind is list and (not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)):
            raise DataError(f"{where}: field '{field}' must be a list of non-empty strings, got {value!r}")
        if name in RELATION_ARGUMENTS and value not in RELATIONS:
            raise DataError(f"{where}: field '{field}' must be one of {list(RELATIONS)}, got {value!r}")
    return out


def to_ifeval_row(p: Prompt) -> dict[str, Any]:
    row: dict[str, Any] = {"key": p.prompt_id, "prompt": p.text}
    row.update(instruction_id_list=p.instruction_id_list, kwargs=p.kwargs)
    if p.base:
        row["base"] = p.base
    return row


# ---------------------------------------------------------------------------------------------- held-out set

FORMS = (
    "Write a short blog post about {s}.",
    "Write a letter to a friend about {s}.",
    "Write a product description for a new app about {s}.",
    "Explain {s} to a ten-year-old.",
    "Write a short story about {s}.",
    "Give advice to a beginner about {s}.",
    "Write a speech for a school assembly about {s}.",
    "Describe the pros and cons of {s}.",
    "Write a poem about {s}.",
    "Write a diary entry about {s}.",
    "Write an advertisement for a workshop on {s}.",
    "Summarize the main ideas of {s} for a busy reader.",
    "Write a dialogue between two neighbours about {s}.",
    "Write a news report about a town that is excited about {s}.",
    "Plan a one-day event about {s}.",
    "Write a review of a book about {s}.",
    "Write an email to a colleague proposing a project on {s}.",
    "Write the opening of a podcast episode about {s}.",
    "Write a set of tips for teenagers about {s}.",
    "Write a riddle whose answer is related to {s}.",
    "Describe a typical day for someone whose job involves {s}.",
    "Write a persuasive paragraph on why schools should teach {s}.",
    "Write a thank-you note to a volunteer who helped with {s}.",
    "Write a short guide to getting started with {s}.",
)
SUBJECTS = (
    "keeping bees in a city",
    "repairing an old bicycle",
    "learning to play the violin as an adult",
    "saving water at home",
    "the history of public libraries",
    "planting trees along a busy street",
    "running a small bakery",
    "watching meteor showers",
    "knitting warm scarves",
    "composting kitchen scraps",
    "training for a first marathon",
    "building a model railway",
    "caring for houseplants in winter",
    "visiting a lighthouse",
    "learning a second language",
    "cooking with seasonal vegetables",
    "restoring old furniture",
    "organising a neighbourhood clean-up",
    "keeping a budget as a student",
    "photographing birds",
    "the invention of the printing press",
    "living on a houseboat",
    "starting a chess club",
    "making paper by hand",
    "travelling by night train",
    "designing a board game",
    "raising backyard chickens",
    "reducing screen time",
    "mapping hiking trails",
    "writing handwritten letters",
    "the life of honeybees",
    "brewing tea from garden herbs",
    "teaching a dog new tricks",
    "building a treehouse",
    "the science of rainbows",
    "fixing a leaking roof",
    "sharing tools with neighbours",
    "learning to swim",
    "collecting old coins",
    "growing tomatoes on a balcony",
)


def held_out_bases() -> list[str]:
    """Every base instruction of the held-out set: each form with each subject."""
    return [form.format(s=subject) for form in FORMS for subject in SUBJECTS]


def held_out_set(size: int = HELD_OUT_SIZE, seed: int = HELD_OUT_SEED) -> list[Prompt]:
    """`size` distinct base instructions (seeded draw from `held_out_bases`), each with 1-3 constraints."""
    rng = random.Random(seed)
    prompts = []
    for i, base in enumerate(rng.sample(held_out_bases(), size)):
        c = add_constraints(base, rng)
        prompts.append(Prompt(f"cons-{i + 1:03d}", c.prompt, HELD_OUT, c.instruction_id_list, c.kwargs, c.base))
    return prompts


def write_held_out(path: str | Path = HELD_OUT) -> Path:
    target = project_file(path)
    write_jsonl(target, (to_ifeval_row(p) for p in held_out_set()))
    return target
