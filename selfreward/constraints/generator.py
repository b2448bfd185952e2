"""Our generator of constraint prompts: 1-3 compatible checkable instructions, phrased by our own templates
(several phrasings per type), added to a base instruction. Deterministic for a given `random.Random`.

The instruction ids and arguments are IFEval's (`checkers.CHECKERS`), so generated prompts are checked by the
same checkers as a user's IFEval file. The argument ranges are ours, sized for answers of a few hundred tokens
(at most 200 words, 10 sentences, 5 paragraphs). Two instructions that cannot both be followed, or that would
make each other trivially false (all lowercase and a `P.S.`, JSON and bullet points), are never drawn together
(`CONFLICTS`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selfreward.constraints.checkers import CHECKERS, follows

WORDS = (
    "garden river window history market balance signal travel winter recipe budget planet museum silence "
    "harvest journey ladder lantern orbit pattern puzzle rhythm shadow harbor meadow engine canvas compass "
    "festival library mirror ocean pencil season theory village weather bridge candle forest island kitchen "
    "memory motion number office picture question reason school summer ticket valley wonder"
).split()
END_PHRASES = (
    "Is there anything else I can help with?",
    "That is all for now.",
    "Thank you for reading.",
    "Let me know what you think.",
    "Have a wonderful day.",
    "Any other questions?",
)
LANGUAGES = {"es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese", "nl": "Dutch"}
LETTERS = "abcdefghilmnoprstuw"


def _relation(rng: random.Random) -> str:
    return rng.choice(("less than", "at least"))


@dataclass(frozen=True)
class ConstraintType:
    phrasings: tuple[str, ...]
    """Our sentences, with the arguments as {placeholders} (plus {relation_words} for relations)."""
    sample: Callable[[random.Random, dict[str, Any]], dict[str, Any]] = lambda rng, ctx: {}
    """Arguments (IFEval's names) from the generator's random state and the prompt's context (`base`,
    `used_words`: words other instructions of the prompt use, so keyword instructions never collide)."""
    weight: float = 1.0


def _words(rng: random.Random, ctx: dict[str, Any], n: int) -> list[str]:
    free = [w for w in WORDS if w not in ctx["used_words"]]
    picked = rng.sample(free, n)
    ctx["used_words"].update(picked)
    return picked


def _count_relation(lo: int, hi: int, key: str, rel_key: str) -> Callable[[random.Random, dict], dict]:
    def sample(rng: random.Random, ctx: dict) -> dict:
        relation = _relation(rng)
        n = rng.randint(lo + 1 if relation == "less than" else lo, hi)
        return {key: n, rel_key: relation}

    return sample


TYPES: dict[str, ConstraintType] = {
    "keywords:existence": ConstraintType(
        (
            "Mention the words {keywords_words} somewhere in your answer.",
            "Your response must include the keywords {keywords_words}.",
            "Be sure to use the words {keywords_words}.",
        ),
        lambda rng, ctx: {"keywords": _words(rng, ctx, rng.randint(1, 2))},
    ),
    "keywords:frequency": ConstraintType(
        (
            'Use the word "{keyword}" {relation_words} {frequency} times.',
            'The word "{keyword}" should appear {relation_words} {frequency} times in your response.',
            'Make sure the word "{keyword}" occurs {relation_words} {frequency} times.',
        ),
        lambda rng, ctx: {
            "keyword": _words(rng, ctx, 1)[0],
            "frequency": rng.randint(2, 4),
            "relation": _relation(rng),
        },
    ),
    "keywords:forbidden_words": ConstraintType(
        (
            "Do not use the words {forbidden_words_words}.",
            "Avoid the words {forbidden_words_words} entirely.",
            "Your answer must not contain the words {forbidden_words_words}.",
        ),
        lambda rng, ctx: {"forbidden_words": _words(rng, ctx, rng.randint(1, 3))},
    ),
    "keywords:letter_frequency": ConstraintType(
        (
            "The letter {letter} should appear {relation_words} {let_frequency} times in your response.",
            'Use the letter "{letter}" {relation_words} {let_frequency} times.',
        ),
        lambda rng, ctx: {
            "letter": rng.choice(LETTERS),
            "let_frequency": rng.randint(2, 12),
            "let_relation": _relation(rng),
        },
        weight=0.7,
    ),
    "language:response_language": ConstraintType(
        (
            "Write your entire response in {language_name}; no other language is allowed.",
            "Answer only in {language_name}.",
            "Your whole reply must be in the {language_name} language.",
        ),
        lambda rng, ctx: {"language": rng.choice(sorted(LANGUAGES))},
        weight=0.5,
    ),
    "length_constraints:number_sentences": ConstraintType(
        (
            "Your response should have {relation_words} {num_sentences} sentences.",
            "Write {relation_words} {num_sentences} sentences.",
            "Use {relation_words} {num_sentences} sentences in your answer.",
        ),
        _count_relation(2, 10, "num_sentences", "relation"),
    ),
    "length_constraints:number_paragraphs": ConstraintType(
        (
            "Write exactly {num_paragraphs} paragraphs, separated from each other by the markdown divider ***.",
            "Your answer must have {num_paragraphs} paragraphs; put *** on its own line between paragraphs.",
        ),
        lambda rng, ctx: {"num_paragraphs": rng.randint(2, 4)},
    ),
    "length_constraints:number_words": ConstraintType(
        (
            "Answer with {relation_words} {num_words} words.",
            "Your response should contain {relation_words} {num_words} words.",
            "Keep the length to {relation_words} {num_words} words.",
        ),
        lambda rng, ctx: (
            {"num_words": rng.randint(40, 150), "relation": "at least"}
            if rng.random() < 0.5
            else {"num_words": rng.randint(30, 200), "relation": "less than"}
        ),
    ),
    "length_constraints:nth_paragraph_first_word": ConstraintType(
        (
            "Write {num_paragraphs} paragraphs separated by blank lines, and start paragraph {nth_paragraph} "
            'with the word "{first_word}".',
            "Your answer needs {num_paragraphs} paragraphs, with a blank line between them; paragraph "
            '{nth_paragraph} must begin with the word "{first_word}".',
        ),
        lambda rng, ctx: _nth_paragraph(rng, ctx),
        weight=0.7,
    ),
    "detectable_content:postscript": ConstraintType(
        (
            "At the end of your response, add a postscript starting with {postscript_marker}",
            "Finish with a short note that begins with {postscript_marker}",
        ),
        lambda rng, ctx: {"postscript_marker": rng.choice(("P.S.", "P.P.S"))},
    ),
    "detectable_content:number_placeholders": ConstraintType(
        (
            "Include at least {num_placeholders} placeholders in square brackets, such as [name].",
            "Leave at least {num_placeholders} blanks for the reader to fill in, written in square brackets like "
            "[date].",
        ),
        lambda rng, ctx: {"num_placeholders": rng.randint(1, 3)},
    ),
    "detectable_format:number_bullet_lists": ConstraintType(
        (
            "Your answer must contain exactly {num_bullets} bullet points, written as markdown bullets like:\n"
            "* This is a point.",
            "Give exactly {num_bullets} markdown bullet points (lines starting with * ).",
        ),
        lambda rng, ctx: {"num_bullets": rng.randint(2, 5)},
    ),
    "detectable_format:constrained_response": ConstraintType(
        (
            'Answer with one of these exact phrases: "My answer is yes.", "My answer is no." or "My answer is maybe."',
            "Reply using one of the following: My answer is yes. / My answer is no. / My answer is maybe.",
        ),
        weight=0.5,
    ),
    "detectable_format:number_highlighted_sections": ConstraintType(
        (
            "Highlight at least {num_highlights} parts of your answer with markdown, like *this part*.",
            "Mark at least {num_highlights} phrases as highlighted using asterisks, for example *key idea*.",
        ),
        lambda rng, ctx: {"num_highlights": rng.randint(1, 3)},
    ),
    "detectable_format:multiple_sections": ConstraintType(
        (
            'Split your response into {num_sections} sections, each starting with "{section_spliter} X" '
            "where X is the section number.",
            "Organise the answer in {num_sections} parts and label each one {section_spliter} 1, "
            "{section_spliter} 2 and so on.",
        ),
        lambda rng, ctx: {"section_spliter": rng.choice(("Section", "SECTION")), "num_sections": rng.randint(2, 4)},
    ),
    "detectable_format:json_format": ConstraintType(
        (
            "Format your entire output as JSON.",
            "Wrap the whole answer in JSON format; you may use a ```json code block.",
        ),
        weight=0.7,
    ),
    "detectable_format:title": ConstraintType(
        (
            "Give your answer a title wrapped in double angular brackets, like <<my title>>.",
            "Start with a title written between << and >>.",
        ),
    ),
    "combination:two_responses": ConstraintType(
        (
            "Give two different responses, separated by six asterisks: ******",
            "Write two distinct answers and put a line of six asterisks (******) between them.",
        ),
        weight=0.7,
    ),
    "combination:repeat_prompt": ConstraintType(
        (
            "First repeat the request above word for word, then give your answer (the request to repeat does "
            "not include this sentence).",
            "Before answering, copy the request exactly as it is written above (without this sentence), then respond.",
        ),
        lambda rng, ctx: {"prompt_to_repeat": ctx["base"]},
        weight=0.7,
    ),
    "startend:end_checker": ConstraintType(
        (
            'End your response with the exact phrase "{end_phrase}" and nothing after it.',
            'Finish your answer with these exact words: "{end_phrase}"',
        ),
        lambda rng, ctx: {"end_phrase": rng.choice(END_PHRASES)},
    ),
    "startend:quotation": ConstraintType(
        (
            "Wrap your entire response in double quotation marks.",
            "Put the whole answer inside double quotes.",
        ),
    ),
    "change_case:capital_word_frequency": ConstraintType(
        (
            "Use words written in all capital letters {relation_words} {capital_frequency} times.",
            "Words in ALL CAPS should appear {relation_words} {capital_frequency} times.",
        ),
        _count_relation(2, 10, "capital_frequency", "capital_relation"),
    ),
    "change_case:english_capital": ConstraintType(
        (
            "Write your whole response in English, in capital letters only.",
            "Answer in English using only UPPERCASE letters.",
        ),
    ),
    "change_case:english_lowercase": ConstraintType(
        (
            "Write your whole response in English and in lowercase letters; no capital letters are allowed.",
            "Use only lowercase letters in your English answer.",
        ),
    ),
    "punctuation:no_comma": ConstraintType(
        (
            "Do not use any commas in your response.",
            "Write without a single comma.",
            "Avoid commas entirely.",
        ),
    ),
}
assert set(TYPES) == set(CHECKERS), set(TYPES) ^ set(CHECKERS)


def _nth_paragraph(rng: random.Random, ctx: dict) -> dict:
    num = rng.randint(2, 4)
    return {"num_paragraphs": num, "nth_paragraph": rng.randint(1, num), "first_word": _words(rng, ctx, 1)[0]}


_KEYWORDS = {"keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency"}
_CASE = {"change_case:english_capital", "change_case:english_lowercase", "change_case:capital_word_frequency"}
_SHAPE = {
    "length_constraints:number_paragraphs",
    "length_constraints:nth_paragraph_first_word",
    "detectable_format:multiple_sections",
    "combination:two_responses",
    "detectable_format:json_format",
}
_CONFLICT_LIST: list[tuple[str, set[str]]] = [
    ("change_case:english_capital", _CASE | {"language:response_language", "detectable_format:multiple_sections"}),
    (
        "change_case:english_lowercase",
        _CASE
        | {
            "language:response_language",
            "detectable_format:multiple_sections",
            "detectable_content:postscript",
            "startend:end_checker",
            "detectable_format:constrained_response",
        },
    ),
    (
        "language:response_language",
        _KEYWORDS
        | _CASE
        | {
            "startend:end_checker",
            "combination:repeat_prompt",
            "combination:two_responses",
            "detectable_format:constrained_response",
            "length_constraints:nth_paragraph_first_word",
            "detectable_content:postscript",
        },
    ),
    (
        "detectable_format:json_format",
        _SHAPE
        | {
            "detectable_format:number_bullet_lists",
            "detectable_format:title",
            "combination:repeat_prompt",
            "startend:quotation",
            "startend:end_checker",
            "detectable_content:postscript",
            "punctuation:no_comma",
            "detectable_format:number_highlighted_sections",
        },
    ),
    ("length_constraints:number_paragraphs", _SHAPE),
    ("length_constraints:nth_paragraph_first_word", _SHAPE | {"combination:repeat_prompt"}),
    ("detectable_format:multiple_sections", _SHAPE),
    ("combination:two_responses", _SHAPE | {"combination:repeat_prompt", "startend:quotation"}),
    ("combination:repeat_prompt", {"startend:quotation"}),
    (
        "detectable_format:constrained_response",
        set(CHECKERS)
        - {"punctuation:no_comma", "startend:quotation", "detectable_content:postscript", "detectable_format:title"},
    ),
]
CONFLICTS: dict[str, set[str]] = {i: {i} for i in CHECKERS}
for _id, _others in _CONFLICT_LIST:
    for _other in _others:
        CONFLICTS[_id].add(_other)
        CONFLICTS[_other].add(_id)


@dataclass
class ConstraintPrompt:
    """A prompt with checkable instructions (IFEval's row fields, plus `base`: the instruction before them)."""

    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict[str, Any]]
    base: str = ""
    phrases: list[str] = field(default_factory=list)


def draw_ids(rng: random.Random, count: int) -> list[str]:
    """`count` mutually compatible instruction ids, drawn by weight without replacement."""
    ids: list[str] = []
    while len(ids) < count:
        options = [i for i in TYPES if not any(i in CONFLICTS[j] for j in ids)]
        if not options:
            break
        ids.append(rng.choices(options, weights=[TYPES[i].weight for i in options])[0])
    return ids


def phrase(instruction_id: str, kwargs: dict[str, Any], rng: random.Random) -> str:
    """One of our phrasings of the instruction with its arguments filled in."""
    values: dict[str, Any] = dict(kwargs)
    for key in ("relation", "let_relation", "capital_relation"):
        if key in kwargs:
            values["relation_words"] = "fewer than" if kwargs[key] == "less than" else "at least"
    for key in ("keywords", "forbidden_words"):
        if key in kwargs:
            values[f"{key}_words"] = _listing(kwargs[key])
    if "language" in kwargs:
        values["language_name"] = LANGUAGES.get(kwargs["language"], kwargs["language"])
    return rng.choice(TYPES[instruction_id].phrasings).format(**values)


def _listing(words: list[str]) -> str:
    quoted = [f'"{w}"' for w in words]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def add_constraints(base: str, rng: random.Random, count: int | None = None) -> ConstraintPrompt:
    """`base` with `count` (default: 1-3, drawn) compatible constraints appended, each in one of our phrasings."""
    base = base.strip()
    if count is None:
        count = rng.choices((1, 2, 3), weights=(0.45, 0.35, 0.2))[0]
    for _ in range(100):
        ctx: dict[str, Any] = {"base": base, "used_words": set(re.findall(r"[a-z]+", base.lower())) & set(WORDS)}
        ids = draw_ids(rng, count)
        kwargs = [TYPES[i].sample(rng, ctx) for i in ids]
        if followable(base, ids, kwargs):
            break
    phrases = [phrase(i, k, rng) for i, k in zip(ids, kwargs, strict=True)]
    return ConstraintPrompt(" ".join([base, *phrases]), ids, kwargs, base, phrases)


LIMITS = {"punctuation:no_comma", "keywords:forbidden_words"}
"""Instructions that forbid something: a repeated request that breaks one cannot be followed."""


def followable(base: str, ids: list[str], kwargs: list[dict[str, Any]]) -> bool:
    """False when the answer must start with the request (`combination:repeat_prompt`) and the request itself
    breaks another drawn instruction that forbids something (a comma, a forbidden word, a `less than` count)."""
    if "combination:repeat_prompt" not in ids:
        return True
    for i, k in zip(ids, kwargs, strict=True):
        limiting = i in LIMITS or "less than" in (k.get("relation"), k.get("let_relation"), k.get("capital_relation"))
        if limiting and not follows(i, k, base):
            return False
    return True
