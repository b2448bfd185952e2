"""Checkable instructions: IFEval's 25 checkers on hand-written answers (strict and loose), the IFEval-format
reader and its errors, our generator and held-out set."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from selfreward.artifacts import DataError
from selfreward.constraints import checkers
from selfreward.constraints.checkers import check_prompt, count_sentences, follows, follows_loose, word_tokens
from selfreward.constraints.data import HELD_OUT, held_out_set, load_constraint_prompts, to_ifeval_row
from selfreward.constraints.generator import CONFLICTS, TYPES, add_constraints
from selfreward.inputs import load_prompt_file, load_seed_pool

# (instruction id, kwargs, an answer that follows, an answer that does not)
CASES = [
    ("keywords:existence", {"keywords": ["garden", "river"]}, "The Garden by the river.", "A garden alone."),
    ("keywords:frequency", {"keyword": "tea", "frequency": 2, "relation": "at least"}, "Tea, then TEA.", "Tea."),
    ("keywords:frequency", {"keyword": "tea", "frequency": 2, "relation": "less than"}, "Tea.", "tea tea"),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A catalogue of dogs.", "The Cat sat."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zoo zebra", "zoo"),
    ("keywords:letter_frequency", {"letter": "e", "let_frequency": 3, "let_relation": "less than"}, "hello", "eeee"),
    (
        "language:response_language",
        {"language": "es"},
        "Me gusta mucho caminar por el parque con mis amigos los domingos por la tarde.",
        "I really like walking in the park with my friends on Sunday afternoons.",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "at least"},
        "A b. C d! E f?",
        "One. Two.",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": "less than"},
        "Dr. Smith met Mr. Jones at 3 p.m. today.",
        "First one. Second one.",
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "One.\n***\nTwo.", "One.\n***\n\n***\nTwo."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four five", "a b c"),
    ("length_constraints:number_words", {"num_words": 4, "relation": "less than"}, "it's fine", "one two three four"),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "river"},
        'Intro here.\n\n"River, runs on.',
        "Intro here.\n\nThe river runs on.",
    ),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\nP.S. see you", "Hi. PS see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\np. p. s. later", "Hi.\nP.S. later"),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], on [date].", "Dear [name]."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "List:\n* one\n- two", "List:\n* one\n* two\n* x"),
    ("detectable_format:constrained_response", {}, "Well... My answer is no.", "My answer is: no."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and **b**", "*a* and ** **"),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nfoo\nSection 2\nbar",
        "Section 1\nfoo\nsection 2\nbar",
    ),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ("detectable_format:title", {}, "<<A Day Out>>\nText.", "<< >>\nText <<no\nclose>>"),
    ("combination:two_responses", {}, "First.\n******\nSecond.", "Same.\n******\nSame."),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a haiku about rain."},
        "write a haiku about rain. Drops fall.",
        "Here: Write a haiku about rain.",
    ),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        '"Done. Any other questions?"',
        "Any other questions? ok",
    ),
    ("startend:quotation", {}, '  "All of it."  ', '"Half of it.'),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "I SAID NO.",
        "I said.",
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "less than"},
        "Hello NASA.",
        "A B",
    ),
    (
        "change_case:english_capital",
        {},
        "THIS IS A SHORT ANSWER WRITTEN ENTIRELY IN CAPITAL LETTERS ABOUT THE GARDEN.",
        "THIS IS ALMOST ALL CAPITAL LETTERS but not quite.",
    ),
    (
        "change_case:english_lowercase",
        {},
        "this is a short answer written entirely in lowercase letters about the garden.",
        "This starts with a capital letter and so it fails.",
    ),
    ("punctuation:no_comma", {}, "No commas here.", "One, two."),
]


def test_every_ifeval_instruction_type_has_a_checker_and_a_hand_written_case() -> None:
    assert len(checkers.CHECKERS) == 25
    assert {c[0] for c in CASES} == set(checkers.CHECKERS)


@pytest.mark.parametrize(
    ("instruction", "kwargs", "good", "bad"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_checker_passes_the_following_answer_and_fails_the_other(instruction, kwargs, good, bad) -> None:
    assert follows(instruction, kwargs, good)
    assert not follows(instruction, kwargs, bad)


def test_an_empty_answer_follows_nothing_even_what_it_trivially_meets() -> None:
    assert not follows("punctuation:no_comma", {}, "   ")
    assert not follows_loose("punctuation:no_comma", {}, "\n")


def test_loose_forgives_a_first_line_a_last_line_and_markdown_stars() -> None:
    # a chatty first line breaks "wrap in quotes" strictly; without it the answer follows
    answer = 'Sure, here it is:\n"All of it."'
    assert not follows("startend:quotation", {}, answer)
    assert follows_loose("startend:quotation", {}, answer)
    # markdown bold around the end phrase
    ended = "Done. **Any other questions?**"
    assert not follows("startend:end_checker", {"end_phrase": "Any other questions?"}, ended)
    assert follows_loose("startend:end_checker", {"end_phrase": "Any other questions?"}, ended)
    # a trailing sign-off line breaks the end phrase; loose removes the last line
    signed = "Text. Have a wonderful day.\n-- Bot"
    assert follows_loose("startend:end_checker", {"end_phrase": "Have a wonderful day."}, signed)
    # loose cannot rescue an answer whose every variant fails
    assert not follows_loose("punctuation:no_comma", {}, "a, b\nc, d\ne, f")


def test_check_prompt_gives_strict_and_loose_per_instruction() -> None:
    strict, loose = check_prompt(
        ["punctuation:no_comma", "startend:quotation"], [{}, {}], 'Here you go:\n"No commas at all"'
    )
    assert strict == [True, False]
    assert loose == [True, True]


def test_sentence_count_and_tokens() -> None:
    assert count_sentences("") == 0
    assert count_sentences("One sentence without a stop") == 1
    assert count_sentences("It costs 3.5 dollars. Then e.g. more! Really? Yes.") == 4
    assert word_tokens("DON'T stop, NOW!") == ["DO", "N'T", "stop", ",", "NOW", "!"]


# ---------------------------------------------------------------------------------------------- reader


def write(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "input_data.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_reader_takes_both_kwargs_forms_of_the_public_format(tmp_path: Path) -> None:
    only_used = {
        "key": 1000,
        "prompt": "Write about tea. No commas. At least 3 sentences.",
        "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_sentences"],
        "kwargs": [{}, {"num_sentences": 3, "relation": "at least"}],
    }
    every_key = dict(only_used, key=1001)
    every_key["kwargs"] = [
        {"num_sentences": None, "relation": None, "keywords": None},
        {"num_sentences": 3, "relation": "at least", "keywords": None},
    ]
    prompts = load_constraint_prompts(write(tmp_path, [only_used, every_key]))
    assert [p.prompt_id for p in prompts] == ["1000", "1001"]
    assert prompts[0].kwargs == prompts[1].kwargs == [{}, {"num_sentences": 3, "relation": "at least"}]
    assert prompts[1].instruction_id_list == only_used["instruction_id_list"]


GOOD = {"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("{not json", "invalid JSON"),
        (dict(GOOD, prompt=""), "'prompt'"),
        (dict(GOOD, instruction_id_list=["punctuation:no_commas"]), "'instruction_id_list[0]'"),
        (dict(GOOD, kwargs=[]), "'kwargs'"),
        (dict(GOOD, instruction_id_list=["keywords:existence"], kwargs=[{}]), "'kwargs[0].keywords'"),
        (
            dict(
                GOOD,
                instruction_id_list=["length_constraints:number_words"],
                kwargs=[{"num_words": 5, "relation": "≥"}],
            ),
            "'kwargs[0].relation'",
        ),
        (
            dict(GOOD, instruction_id_list=["detectable_format:title"], kwargs=[{"num_words": 5}]),
            "'kwargs[0].num_words'",
        ),
        (
            dict(GOOD, instruction_id_list=["detectable_format:number_bullet_lists"], kwargs=[{"num_bullets": "3"}]),
            "num_bullets",
        ),
        (dict(GOOD, key=0), "duplicate key"),
    ],
)
def test_reader_names_file_line_and_field_of_a_bad_row(tmp_path: Path, row, field: str) -> None:
    path = write(tmp_path, [dict(GOOD, key=0), row])
    with pytest.raises(DataError) as err:
        load_constraint_prompts(path)
    message = str(err.value)
    assert f"{path}:2" in message and field in message and "\n" not in message


def test_the_cli_reports_a_bad_prompt_file_in_one_line_with_exit_code_2(tmp_path: Path, capsys) -> None:
    from selfreward.cli import main

    path = write(tmp_path, [dict(GOOD, instruction_id_list=["nope:nothing"])])
    assert main(["constraints", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:1" in err[0] and "instruction_id_list[0]" in err[0]


# ---------------------------------------------------------------------------------------------- generator


def test_generator_is_deterministic_and_draws_only_compatible_instructions() -> None:
    a = [add_constraints("Write a note about tea.", random.Random(7)) for _ in range(3)]
    b = [add_constraints("Write a note about tea.", random.Random(7)) for _ in range(3)]
    assert [x.prompt for x in a] == [x.prompt for x in b]
    rng = random.Random(0)
    for _ in range(500):
        c = add_constraints("Write a note about tea.", rng)
        assert 1 <= len(c.instruction_id_list) <= 3
        assert c.prompt.startswith("Write a note about tea. ")
        for i, x in enumerate(c.instruction_id_list):
            assert not any(x in CONFLICTS[y] for y in c.instruction_id_list[i + 1 :]), c.instruction_id_list
        # every drawn argument is one the checker takes, so the prompt is checkable as generated
        row = to_ifeval_row(held_out_set(1)[0])
        assert row["instruction_id_list"]
        for x, kw in zip(c.instruction_id_list, c.kwargs, strict=True):
            assert set(kw) == set(checkers.arguments(x))


def test_every_type_has_several_phrasings_of_our_own() -> None:
    for instruction, t in TYPES.items():
        assert len(t.phrasings) >= 2, instruction


def test_the_shipped_held_out_set_is_what_the_generator_makes_and_shares_nothing_with_training(tmp_path) -> None:
    shipped = load_constraint_prompts(HELD_OUT)
    made = held_out_set()
    assert [to_ifeval_row(p) for p in shipped] == [dict(to_ifeval_row(p)) for p in made]
    assert 200 <= len(shipped) <= 300
    assert len({p.base for p in shipped}) == len(shipped)
    seed = {t.strip().lower() for t in load_seed_pool("prompts/seed/instructions.jsonl")}
    compare = {p.text.strip().lower() for p in load_prompt_file("prompts/eval/heldout.jsonl")}
    assert not any(p.base.lower() in seed | compare for p in shipped)
    ifeval_ids = set(checkers.CHECKERS)
    assert {i for p in shipped for i in p.instruction_id_list} == ifeval_ids
