"""Prompt cleaning and filtering on hand-made generations."""

from __future__ import annotations

import pytest

from selfreward.config import PromptGenConfig, RunConfig
from selfreward.prompt_gen import NoveltyFilter, build_request, check_text, clean, load_seed_pool


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
