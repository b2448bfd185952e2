"""Prompt cleaning and filtering on hand-made generations."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfreward.artifacts import DataError
from selfreward.config import PromptGenConfig, RunConfig
from selfreward.generation import Completion, Generator, SamplingSpec
from selfreward.inputs import load_prompt_file, load_seed_pool
from selfreward.loop.prompt_gen import NoveltyFilter, build_request, check_text, clean, generate_prompts

from .conftest import ROOT


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" Write a limerick about a cat.\nTask: another", "Write a limerick about a cat."),
        ("Task: Explain photosynthesis.", "Explain photosynthesis."),
        ("3. Name three rivers in Africa.", "Name three rivers in Africa."),
        ("- List two prime numbers.", "List two prime numbers."),
        ("   ", ""),
    ],
)
def test_clean(raw: str, expected: str) -> None:
    assert clean(raw) == expected


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        ("", "stop", "empty"),
        ("Hi there", "stop", "too_short"),
        ("x" * 700, "stop", "too_long"),
        ("Write a story about a dragon who", "length", "truncated"),
        ("Here is a list of diverse tasks for you", "stop", "template_fragment"),
        ("Describe <|im_start|> the weather", "stop", "template_fragment"),
        ("1234 5678 9012 3456 7890 !!!!", "stop", "not_text"),
        ("Write a short poem about the sea at night.", "stop", None),
    ],
)
def test_check_text(text: str, finish: str, reason: str | None) -> None:
    assert check_text(text, finish, PromptGenConfig()) == reason


def test_truncated_allowed_when_configured() -> None:
    assert check_text("Write a story about a dragon who", "length", PromptGenConfig(drop_truncated=False)) is None


def test_novelty_filter() -> None:
    f = NoveltyFilter(["Write a short poem about the sea at night."], threshold=0.7)
    assert f.check("write a short poem about the SEA at night")[0] == "duplicate"
    reason, detail = f.check("Write a short poem about the sea at dawn.")
    assert reason == "near_duplicate" and "ROUGE-L" in detail
    assert f.check("Explain how vaccines train the immune system.") == (None, "")
    f.add("Explain how vaccines train the immune system.")
    assert f.check("Explain how vaccines train the immune system!")[0] == "duplicate"


def test_request_lists_examples_one_per_line() -> None:
    text = build_request("Intro\n\n{examples}Task:", ["First\nline two", "Second"])
    assert text == "Intro\n\nTask: First line two\nTask: Second\nTask:"


def test_shipped_seed_pool_loads() -> None:
    pool = load_seed_pool(RunConfig().seed_data.instructions)
    assert len(pool) >= 200 and len(set(pool)) == len(pool)


def test_load_prompt_file_formats_and_errors(tmp_path: Path) -> None:
    """One loader for every prompt file: seed rows (`instruction`, `id`), iteration rows (`text`,
    `prompt_id`), held-out rows (`text`, `id`); bad rows name file, line and field."""
    seed = load_prompt_file(ROOT / "prompts" / "seed" / "instructions.jsonl")
    assert len(seed) == 212 and seed[0].prompt_id == "seed-001" and seed[0].text.startswith("Write a haiku")
    heldout = load_prompt_file(ROOT / "prompts" / "eval" / "heldout.jsonl")
    assert heldout[0].prompt_id == "eval-001" and len({p.text for p in heldout}) == len(heldout)
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt_id": "i1-p0", "text": "Say hi."}\n\n{"text": "Name a colour."}\n')
    assert [(p.prompt_id, p.text) for p in load_prompt_file(path)] == [("i1-p0", "Say hi."), ("p1", "Name a colour.")]
    for bad, match in [
        ('{"text": "Name a colour."}\n{"text": ""}\n', r"p.jsonl:2: field 'text'"),
        ('{"text": "Say hi."}\n\n{"txt": "typo"}\n', r"p.jsonl:3: field 'text'"),
        ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', r"p.jsonl:2: duplicate prompt id 'a'"),
        ("\n", r"p.jsonl: no prompts"),
    ]:
        path.write_text(bad)
        with pytest.raises(DataError, match=match):
            load_prompt_file(path)


class Scripted(Generator):
    """Prompt writer that returns the given lines in turn (no model)."""

    engine_name = "scripted"

    def __init__(self, lines: list[str]) -> None:
        self.lines, self.generated_tokens, self.generation_seconds = list(lines), 0, 0.0

    def _complete(self, prompts: list[str], spec: SamplingSpec) -> list[list[Completion]]:
        return [[Completion(self.lines.pop(0) if self.lines else "", 5, "stop")] for _ in prompts]


def test_evaluation_prompts_are_never_kept() -> None:
    """The held-out compare prompts are excluded: a copy of one (or a near copy) is rejected as eval_prompt."""
    heldout = [p.text for p in load_prompt_file(ROOT / "prompts" / "eval" / "heldout.jsonl")]
    lines = [heldout[0], heldout[1].rstrip(".?!") + " please", "Describe how a bicycle gear system works in detail."]
    cfg = PromptGenConfig(num_prompts=3, few_shot=2, oversample=1.0, max_rounds=1, min_chars=5)
    kept, rejected = generate_prompts(Scripted(lines), cfg, ["Say hi to me.", "Name a colour now."], 1, 0, heldout)
    assert [p.text for p in kept] == [lines[2]]
    assert [r.reason for r in rejected] == ["eval_prompt", "eval_prompt"]
