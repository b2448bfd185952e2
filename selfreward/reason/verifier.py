"""Checking a model's final answer against a reference number (pure functions; reads and writes nothing).

extract_answer(text) -> (raw, reason)
    The answer is looked for in this order, the last occurrence of each kind winning:
    1. `#### N`                    the rest of the line after the last `####` (GSM8K's final line);
    2. `\\boxed{...}`               the contents of the last box, braces balanced (`\\boxed{\\frac{1}{2}}`);
    3. `Answer: N`, `The answer is N`, `The final answer is N` (any case): the number right after it;
    4. the last number in the text.
    Nothing found: (None, "no_number").

normalize_number(raw) -> (Fraction, None) or (None, "not_a_number")
    Reads one number exactly:
    - a sign (`-7`, `+7`, the Unicode minus), decimals (`2.5`, `.5`), trailing zeros (`12.00` = 12);
    - thousands separators only in groups of three (`1,234`; `1,23` and the decimal comma `2,5` are refused);
    - fractions `3/4`, `\\frac{3}{4}`, `\\dfrac`, `\\tfrac`, and mixed numbers `1 1/2` = 3/2;
    - currency symbols before the number (`$12`, `-$5`, `€3`, LaTeX `\\$`) are dropped;
    - a `%` and unit words after the number are dropped and the number kept: `12%` -> 12, `12 km` -> 12,
      `12 dollars.` -> 12. Any text after the number counts as a unit if it holds no digit, so `12 or 13`
      is refused but `12 apples and pears` reads as 12;
    - LaTeX wrappers `\\text{}`, `\\mathrm{}`, `$...$`, thin spaces `\\,` `\\!` and `{,}` are removed first.
    Number words (`twelve`), several numbers, or an empty string: (None, "not_a_number").

verify(text, reference) -> Verdict
    correct iff the extracted answer reads as a number exactly equal to the reference (Fractions, so
    `0.75` == `3/4`). An unreadable answer is incorrect and its reason (`no_number`, `not_a_number`) is kept;
    a readable wrong answer has reason None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

NO_NUMBER = "no_number"
NOT_A_NUMBER = "not_a_number"

# A plain number as it appears in text: thousands groups or digits, an optional decimal part, an optional
# `/denominator`; a sign only where it cannot be a binary minus (`5-3` gives 3, not -3).
_PLAIN = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_IN_TEXT = re.compile(rf"(?:(?<![\w)\].])[-+\u2212])?(?<![\w./])(?:{_PLAIN})(?:/\d+)?(?!/|,\d{{3}}|\.\d)")
_FRAC = r"\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}"
# After an answer phrase: optional sign and currency, then a LaTeX fraction, a mixed number, or a plain number.
_ANSWER_VALUE = re.compile(
    rf"\s*[:=]?\s*\$?\s*(?:[-+\u2212]\s*)?(?:\\\$|[$€£¥])?\s*(?:{_FRAC}|\d+\s+\d+/\d+|(?:{_PLAIN})(?:/\d+)?)"
)
_ANSWER_PHRASE = re.compile(r"(?:\bthe\s+(?:final\s+)?answer\s+is\b|\banswer\s*:)", re.IGNORECASE)
_HASHES = re.compile(r"####[ \t]*(\S[^\n]*)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")

# normalize_number: a signed number at the start of the (cleaned) string, then what may follow it.
_NUMBER_HEAD = re.compile(
    r"(?P<sign1>[-+])?\s*(?P<cur>[$€£¥])?\s*(?P<sign2>[-+])?\s*(?:"
    r"\\frac\{(?P<fnum>[^{}]*)\}\{(?P<fden>[^{}]*)\}"
    r"|(?P<whole>\d+)\s+(?P<mnum>\d+)\s*/\s*(?P<mden>\d+)"
    rf"|(?P<num>{_PLAIN})(?:\s*/\s*(?P<den>{_PLAIN}))?"
    r")"
)
_UNIT_TAIL = re.compile(r"[%\sA-Za-z°./'’$€£¥()-]*")
_SIMPLE = re.compile(rf"\s*(?P<sign>[-+])?\s*(?P<num>{_PLAIN})\s*")


@dataclass
class Verdict:
    """The check of one answer against its reference."""

    correct: bool
    predicted: str | None
    """The answer found: its canonical form (`format_number`) when it reads as a number, else the raw text
    extracted; None when the text holds no number."""
    reason: str | None
    """Why it could not be read (`no_number`, `not_a_number`); None when it was read (right or wrong)."""


# --------------------------------------------------------------------------- extraction


def extract_answer(text: str) -> tuple[str | None, str | None]:
    """The raw final answer of `text` (see the module docstring for the order) and None, or (None, reason)."""
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip(), None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip(), None
    for phrase in reversed(list(_ANSWER_PHRASE.finditer(text))):
        value = _ANSWER_VALUE.match(text, phrase.end())
        if value:
            return value.group(0).strip(" \t:="), None
    numbers = _NUMBER_IN_TEXT.findall(text)
    if numbers:
        return numbers[-1], None
    return None, NO_NUMBER


def last_boxed(text: str) -> str | None:
    """Contents of the last `\\boxed{...}` (or `\\fbox{...}`) whose braces balance; None if there is none."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


# --------------------------------------------------------------------------- normalisation


def _clean(raw: str) -> str:
    """Remove LaTeX wrappers and spacing so that only the number and its unit remain."""
    s = raw.strip().replace("\u2212", "-").replace("\\$", "$").replace("\\%", "%").replace("{,}", ",")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\(?:,|!|;|:|quad|qquad|left|right)", "", s)
    for _ in range(3):  # \text{\textbf{12}} unwraps in two passes
        s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = s.strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$"):  # $12$ is maths, $12 is money
        s = s[1:-1].strip()
    return s.rstrip(".,;:!?$ \t").strip()


def _plain(text: str) -> Fraction | None:
    """A signed plain number (thousands groups, decimals) or None."""
    m = _SIMPLE.fullmatch(text)
    if not m:
        return None
    value = Fraction(m.group("num").replace(",", ""))
    return -value if m.group("sign") == "-" else value


def normalize_number(raw: str | None) -> tuple[Fraction | None, str | None]:
    """`raw` read as an exact Fraction and None, or (None, "not_a_number"); rules in the module docstring."""
    if raw is None:
        return None, NOT_A_NUMBER
    s = _clean(raw)
    m = _NUMBER_HEAD.match(s)
    if not m or not _UNIT_TAIL.fullmatch(s[m.end() :]):
        return None, NOT_A_NUMBER
    if m.group("sign1") and m.group("sign2"):
        return None, NOT_A_NUMBER
    if m.group("fnum") is not None:
        num, den = _plain(m.group("fnum")), _plain(m.group("fden"))
    elif m.group("whole") is not None:
        den = Fraction(int(m.group("mden")))
        num = int(m.group("whole")) * den + int(m.group("mnum"))
    else:
        num = Fraction(m.group("num").replace(",", ""))
        den = Fraction(m.group("den").replace(",", "")) if m.group("den") else Fraction(1)
    if num is None or den is None or den == 0:
        return None, NOT_A_NUMBER
    value = num / den
    return (-value if "-" in (m.group("sign1"), m.group("sign2")) else value), None


def format_number(value: Fraction) -> str:
    """Canonical text of an exact number: `12`, `-7`, `2.5` (a terminating decimal), else `1/3`."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return f"{value.numerator}/{value.denominator}"
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
    scaled = str(abs(int(value * 10**digits))).rjust(digits + 1, "0")
    return f"{'-' if value < 0 else ''}{scaled[:-digits]}.{scaled[-digits:]}"


# --------------------------------------------------------------------------- verification


def verify(text: str, reference: str | int) -> Verdict:
    """Is the final answer of `text` exactly `reference`? A reference that is not a number is a ValueError."""
    expected, _ = normalize_number(str(reference))
    if expected is None:
        raise ValueError(f"reference answer {str(reference)!r:.60} is not a number")
    raw, reason = extract_answer(text)
    if raw is None:
        return Verdict(False, None, reason)
    value, reason = normalize_number(raw)
    if value is None:
        return Verdict(False, raw, reason)
    return Verdict(value == expected, format_number(value), None)
