"""Checkers for IFEval's 25 instruction types (Zhou et al. 2023), with IFEval's ids, arguments and semantics.

`follows(instruction_id, kwargs, response)` says whether `response` follows one instruction (strict);
`follows_loose` tries IFEval's loose variants of the response: as is, with markdown `*` removed, and each of
those without its first line, its last line, or both; any that is non-empty and follows counts.
`check_prompt` does both for every instruction of a prompt.

The semantics are IFEval's (the reference implementation is lm-eval's `lm_eval.tasks.ifeval`), with two
stand-ins for NLTK data that cannot be downloaded offline:
- sentences (`length_constraints:number_sentences`) are counted by `count_sentences`, a rule-based splitter
  at `.`, `!` or `?` followed by space, that does not split after common abbreviations, initials or decimal
  points (IFEval uses NLTK's English Punkt model, which learns the same kinds of exceptions from data);
- words for `change_case:capital_word_frequency` are `word_tokens`, Treebank-like tokens (words, with
  punctuation split off, and contractions `n't` / `'s` as their own tokens), as `nltk.word_tokenize` gives.
Language identification uses `langdetect` (as IFEval does), seeded so that it is deterministic.

Relations are IFEval's: `less than` (count < N) and `at least` (count >= N).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

RELATIONS = ("less than", "at least")
CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")

# ---------------------------------------------------------------------------------------------- counting


def count_words(text: str) -> int:
    """Runs of word characters (IFEval: NLTK's RegexpTokenizer(r"\\w+"))."""
    return len(re.findall(r"\w+", text))


_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd", "co", "corp",
    "fig", "approx", "dept", "est", "mt", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "u.s", "u.k", "a.m", "p.m", "ph.d", "vol", "al",
}  # fmt: skip


def count_sentences(text: str) -> int:
    """Sentences: a split after `.`, `!` or `?` (and closing quotes or brackets) followed by whitespace, except
    after an abbreviation, a single capital letter (an initial), or a number followed by a lowercase word (an
    ordinal); an empty text has 0. "The total is 42. Then we left." -> 2."""
    text = text.strip()
    if not text:
        return 0
    count = 1
    for m in re.finditer(r"[.!?]+[\"')\]]*(?=\s+\S)", text):
        before = text[: m.start()].split()
        word = before[-1].strip("\"'([") if before else ""
        following = text[m.end() :].lstrip()[:1]
        if m.group().startswith(".") and not m.group().startswith(".."):
            if word.lower() in _ABBREVIATIONS or re.fullmatch(r"[A-Z]", word):
                continue
            if re.fullmatch(r"\d+", word) and following.islower():  # "on the 3. day": an ordinal
                continue
        count += 1
    return count


_TOKEN = re.compile(r"(?i)n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?=n't\b)|\w+|[^\w\s]")


def word_tokens(text: str) -> list[str]:
    """Treebank-like tokens: `DON'T stop, NOW!` -> DO, N'T, stop, `,`, NOW, `!`."""
    return _TOKEN.findall(text)


def compare(count: int, relation: str, n: int) -> bool:
    if relation == "less than":
        return count < n
    if relation == "at least":
        return count >= n
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


@functools.lru_cache(maxsize=4096)
def detect_language(text: str) -> str | None:
    """ISO 639-1 code of the text's language (`langdetect`, seeded); None where it cannot tell (no letters)."""
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    try:
        return detect(text)
    except LangDetectException:
        return None


# ---------------------------------------------------------------------------------------------- checkers
# Each takes the response and the instruction's arguments (IFEval's names) and returns whether it follows.


def _existence(r: str, keywords: list[str]) -> bool:
    return all(re.search(k, r, flags=re.IGNORECASE) for k in keywords)


def _frequency(r: str, keyword: str, frequency: int, relation: str) -> bool:
    return compare(len(re.findall(keyword.strip(), r, flags=re.IGNORECASE)), relation, frequency)


def _forbidden_words(r: str, forbidden_words: list[str]) -> bool:
    return not any(re.search(r"\b" + w + r"\b", r, flags=re.IGNORECASE) for w in forbidden_words)


def _letter_frequency(r: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    return compare(r.lower().count(letter.lower()), let_relation, let_frequency)


def _response_language(r: str, language: str) -> bool:
    found = detect_language(r)
    return True if found is None else found == language  # IFEval: undetectable text passes


def _number_sentences(r: str, num_sentences: int, relation: str) -> bool:
    return compare(count_sentences(r), relation, num_sentences)


def _number_paragraphs(r: str, num_paragraphs: int) -> bool:
    """Paragraphs separated by the markdown divider `***`; an empty one is allowed only at either end."""
    paragraphs = re.split(r"\s?\*\*\*\s?", r)
    count = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def _number_words(r: str, num_words: int, relation: str) -> bool:
    return compare(count_words(r), relation, num_words)


def _nth_paragraph_first_word(r: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Paragraphs separated by a blank line (`\\n\\n`): there are `num_paragraphs` non-empty ones and the
    `nth_paragraph`-th (1-based, counting every piece) starts with `first_word` (case and punctuation aside)."""
    paragraphs = re.split(r"\n\n", r)
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for ch in word:
        if ch in {".", ",", "?", "!", "'", '"'}:
            break
        first += ch.lower()
    return count == num_paragraphs and first == first_word.lower()


def _postscript(r: str, postscript_marker: str) -> bool:
    text, postscript_marker = r.lower(), postscript_marker.strip()
    if postscript_marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + postscript_marker.lower() + r".*$"
    return bool(re.findall(pattern, text, flags=re.MULTILINE))


def _number_placeholders(r: str, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", r)) >= num_placeholders


def _number_bullet_lists(r: str, num_bullets: int) -> bool:
    """Exactly `num_bullets` markdown bullets (lines starting with `* ` or `-`)."""
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def _constrained_response(r: str) -> bool:
    r = r.strip()
    return any(option in r for option in CONSTRAINED_RESPONSE_OPTIONS)


def _number_highlighted_sections(r: str, num_highlights: int) -> bool:
    """At least `num_highlights` non-empty markdown highlights, `*like this*` or `**like this**`, on one line."""
    found = re.findall(r"\*[^\n\*]*\*", r) + re.findall(r"\*\*[^\n\*]*\*\*", r)
    return sum(1 for h in found if h.strip("*").strip()) >= num_highlights


def _multiple_sections(r: str, section_spliter: str, num_sections: int) -> bool:
    """At least `num_sections` sections, each started by the splitter word and a number (`SECTION 1`)."""
    sections = re.split(r"\s?" + section_spliter.strip() + r"\s?\d+\s?", r)
    return len(sections) - 1 >= num_sections


def _json_format(r: str) -> bool:
    """The whole response is JSON, optionally in a ```json fence."""
    value = r.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(prefix)
    value = value.removesuffix("```").strip()
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _title(r: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


def _two_responses(r: str) -> bool:
    """Two different responses separated by six asterisks `******`."""
    parts = r.split("******")
    valid = []
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def _repeat_prompt(r: str, prompt_to_repeat: str) -> bool:
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _end_checker(r: str, end_phrase: str) -> bool:
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _capital_word_frequency(r: str, capital_frequency: int, capital_relation: str) -> bool:
    return compare(sum(1 for w in word_tokens(r) if w.isupper()), capital_relation, capital_frequency)


def _english_capital(r: str) -> bool:
    return r.isupper() and _response_language(r, "en")


def _english_lowercase(r: str) -> bool:
    return r.islower() and _response_language(r, "en")


def _no_comma(r: str) -> bool:
    return "," not in r


def _quotation(r: str) -> bool:
    r = r.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


CHECKERS: dict[str, Callable[..., bool]] = {
    "keywords:existence": _existence,
    "keywords:frequency": _frequency,
    "keywords:forbidden_words": _forbidden_words,
    "keywords:letter_frequency": _letter_frequency,
    "language:response_language": _response_language,
    "length_constraints:number_sentences": _number_sentences,
    "length_constraints:number_paragraphs": _number_paragraphs,
    "length_constraints:number_words": _number_words,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "detectable_content:postscript": _postscript,
    "detectable_content:number_placeholders": _number_placeholders,
    "detectable_format:number_bullet_lists": _number_bullet_lists,
    "detectable_format:constrained_response": _constrained_response,
    "detectable_format:number_highlighted_sections": _number_highlighted_sections,
    "detectable_format:multiple_sections": _multiple_sections,
    "detectable_format:json_format": _json_format,
    "detectable_format:title": _title,
    "combination:two_responses": _two_responses,
    "combination:repeat_prompt": _repeat_prompt,
    "startend:end_checker": _end_checker,
    "startend:quotation": _quotation,
    "change_case:capital_word_frequency": _capital_word_frequency,
    "change_case:english_capital": _english_capital,
    "change_case:english_lowercase": _english_lowercase,
    "punctuation:no_comma": _no_comma,
}
"""IFEval's 25 instruction ids -> checker."""

ARGUMENTS: dict[str, dict[str, type]] = {
    "keywords:existence": {"keywords": list},
    "keywords:frequency": {"keyword": str, "frequency": int, "relation": str},
    "keywords:forbidden_words": {"forbidden_words": list},
    "keywords:letter_frequency": {"letter": str, "let_frequency": int, "let_relation": str},
    "language:response_language": {"language": str},
    "length_constraints:number_sentences": {"num_sentences": int, "relation": str},
    "length_constraints:number_paragraphs": {"num_paragraphs": int},
    "length_constraints:number_words": {"num_words": int, "relation": str},
    "length_constraints:nth_paragraph_first_word": {"num_paragraphs": int, "nth_paragraph": int, "first_word": str},
    "detectable_content:postscript": {"postscript_marker": str},
    "detectable_content:number_placeholders": {"num_placeholders": int},
    "detectable_format:number_bullet_lists": {"num_bullets": int},
    "detectable_format:number_highlighted_sections": {"num_highlights": int},
    "detectable_format:multiple_sections": {"section_spliter": str, "num_sections": int},
    "combination:repeat_prompt": {"prompt_to_repeat": str},
    "startend:end_checker": {"end_phrase": str},
    "change_case:capital_word_frequency": {"capital_frequency": int, "capital_relation": str},
}
"""The arguments each instruction takes (IFEval's kwargs names and types); the others take none."""

RELATION_ARGUMENTS = {"relation", "let_relation", "capital_relation"}


def arguments(instruction_id: str) -> dict[str, type]:
    return ARGUMENTS.get(instruction_id, {})


def follows(instruction_id: str, kwargs: dict[str, Any], response: str) -> bool:
    """Strict: does `response` follow the instruction? An empty (whitespace) response follows nothing."""
    if not response.strip():
        return False
    return CHECKERS[instruction_id](response, **{k: kwargs[k] for k in arguments(instruction_id)})


def loose_variants(response: str) -> list[str]:
    """IFEval's loose variants: the response and it without markdown `*`, each also without its first line,
    its last line, and both."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *(c.replace("*", "") for c in cut)]


def follows_loose(instruction_id: str, kwargs: dict[str, Any], response: str) -> bool:
    return any(follows(instruction_id, kwargs, r) for r in loose_variants(response))


def check_prompt(
    instruction_ids: list[str], kwargs: list[dict[str, Any]], response: str
) -> tuple[list[bool], list[bool]]:
    """(strict, loose) verdicts for each instruction of a prompt."""
    strict = [follows(i, k, response) for i, k in zip(instruction_ids, kwargs, strict=True)]
    loose = [s or follows_loose(i, k, response) for s, i, k in zip(strict, instruction_ids, kwargs, strict=True)]
    return strict, loose
