"""The answer verifier (`reason/verifier.py`): extraction order, exact normalisation, verdicts."""

from __future__ import annotations

from fractions import Fraction

import pytest

from selfreward.reason.verifier import (
    Verdict,
    extract_answer,
    format_number,
    last_boxed,
    normalize_number,
    verify,
)

# --------------------------------------------------------------------------- extraction priority


@pytest.mark.parametrize(
    ("text", "raw"),
    [
        # `####` beats everything, and the last one wins
        ("Answer: 3. \\boxed{4}\n#### 5\n#### 6\nthen 7", "6"),
        # no `####`: the last box beats an answer phrase and later numbers
        ("\\boxed{1} The answer is 2. \\boxed{3} and 9 more", "3"),
        # no box: the last answer phrase beats a later number
        ("Answer: 10. The answer is 11 apples, since 4 + 7 = 11 and 99 is wrong", "11"),
        ("the FINAL ANSWER IS $1,200. Check: 600 * 2", "$1,200"),
        # nothing else: the last number; `5-3` is a difference, so the last number is 3, not -3
        ("we have 12 and then 5-3", "3"),
        ("so the total is -7.", "-7"),
        ("a third is 3/4 of nothing", "3/4"),
        ("counts 1,234 items", "1,234"),
        # an answer phrase without a number falls through to the last number
        ("The answer is twelve, or maybe 12", "12"),
    ],
)
def test_extraction_priority(text: str, raw: str) -> None:
    assert extract_answer(text) == (raw, None)


def test_no_number_is_a_reason() -> None:
    assert extract_answer("") == (None, "no_number")
    assert extract_answer("no idea, sorry") == (None, "no_number")


def test_boxed_with_nested_braces() -> None:
    """Braces inside the box are balanced: the contents are `\\frac{3}{4}` (not `\\frac{3`)."""
    assert last_boxed("so \\boxed{\\frac{3}{4}} done") == "\\frac{3}{4}"
    assert extract_answer("first \\boxed{1} then \\boxed{\\dfrac{1}{2}}.") == ("\\dfrac{1}{2}", None)
    assert verify("\\boxed{\\frac{3}{4}}", "0.75").correct
    # an unclosed box is no box: the last number is taken instead
    assert last_boxed("\\boxed{3 and 4") is None
    assert extract_answer("\\boxed{3 and 4") == ("4", None)


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1,234", Fraction(1234)),
        ("1,234,567.50", Fraction(123456750, 100)),  # 1234567.5
        ("$12.00", Fraction(12)),  # currency dropped, 12.00 = 12
        ("12.0", Fraction(12)),
        ("+7", Fraction(7)),
        ("-7", Fraction(-7)),
        ("\u22127", Fraction(-7)),  # the Unicode minus
        ("-$5", Fraction(-5)),
        ("2.5", Fraction(5, 2)),
        (".5", Fraction(1, 2)),
        ("3/4", Fraction(3, 4)),
        ("\\frac{1}{2}", Fraction(1, 2)),
        ("\\dfrac{3}{4}", Fraction(3, 4)),
        ("\\frac{-3}{4}", Fraction(-3, 4)),
        ("1 1/2", Fraction(3, 2)),  # mixed: 1 + 1/2
        ("12 dollars", Fraction(12)),
        ("12 km.", Fraction(12)),
        ("12%", Fraction(12)),  # a percentage keeps its number
        ("$12$", Fraction(12)),  # LaTeX maths delimiters
        ("12\\text{ apples}", Fraction(12)),
        ("1{,}000", Fraction(1000)),
    ],
)
def test_normalize_by_hand(raw: str, value: Fraction) -> None:
    assert normalize_number(raw) == (value, None)


@pytest.mark.parametrize("raw", ["", "no idea", "twelve", "12 or 13", "2,5", "1,23", "3/0", "-$-5", None])
def test_normalize_refuses(raw: str | None) -> None:
    """Number words, two numbers, the decimal comma, badly grouped thousands and x/0 are not read."""
    assert normalize_number(raw) == (None, "not_a_number")


def test_equal_values_in_different_forms() -> None:
    """3/4 = 0.75 = \\frac{3}{4}; 1/2 = 0.5; 1,234 = 1234.00."""
    assert normalize_number("3/4")[0] == normalize_number("0.75")[0] == normalize_number("\\frac{3}{4}")[0]
    assert normalize_number("\\frac{1}{2}")[0] == normalize_number("0.5")[0]
    assert normalize_number("1,234")[0] == normalize_number("1234.00")[0]


def test_format_number() -> None:
    """Integers as integers, terminating decimals as decimals (5/2 = 2.5, -1/8 = -0.125), else p/q."""
    assert format_number(Fraction(12)) == "12"
    assert format_number(Fraction(-7)) == "-7"
    assert format_number(Fraction(5, 2)) == "2.5"
    assert format_number(Fraction(-1, 8)) == "-0.125"
    assert format_number(Fraction(1, 1000)) == "0.001"
    assert format_number(Fraction(1, 3)) == "1/3"


# --------------------------------------------------------------------------- verdicts


def test_verify_right_and_wrong() -> None:
    assert verify("Step 1: 12 * 3 = 36\n#### 36", "36") == Verdict(True, "36", None)
    assert verify("The answer is $1,234.00", 1234) == Verdict(True, "1234", None)
    assert verify("so x = 0.75", "3/4") == Verdict(True, "0.75", None)
    assert verify("#### 35", "36") == Verdict(False, "35", None)  # read, and wrong: no reason


def test_verify_refuses_unreadable_answers_with_reason() -> None:
    assert verify("", "12") == Verdict(False, None, "no_number")
    assert verify("no idea", "12") == Verdict(False, None, "no_number")
    assert verify("The answer is twelve", "12") == Verdict(False, None, "no_number")
    # `####` was written, but what follows is not one number
    assert verify("#### twelve", "12") == Verdict(False, "twelve", "not_a_number")
    assert verify("#### 12 or 13", "12") == Verdict(False, "12 or 13", "not_a_number")


def test_verify_rejects_a_bad_reference() -> None:
    with pytest.raises(ValueError, match="not a number"):
        verify("#### 3", "three")
