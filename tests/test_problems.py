"""The problem generator, train/test splits and problem files (`reason/problems.py`)."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from selfreward.artifacts import DataError
from selfreward.errors import UserError
from selfreward.reason.problems import (
    TEMPLATES,
    Difficulty,
    Problem,
    generate_problems,
    load_problem_file,
    normalize_prompt,
    train_test_split,
    write_problem_file,
)
from selfreward.reason.verifier import verify

STEP_LINE = re.compile(r"Step (\d+): (\d+) ([-+*/]) (\d+) = (\d+) .+\.")


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def replay(solution: str) -> tuple[list[tuple[int, str, int, int]], int]:
    """The (left, op, right, result) of every step line, recomputed, and the `#### N` of the last line."""
    *steps, last = solution.splitlines()
    assert last.startswith("#### ")
    out = []
    for i, line in enumerate(steps, 1):
        m = STEP_LINE.fullmatch(line)
        assert m, line
        assert int(m.group(1)) == i
        left, op, right, result = int(m.group(2)), m.group(3), int(m.group(4)), int(m.group(5))
        exact = {"+": left + right, "-": left - right, "*": left * right, "/": Fraction(left, right)}[op]
        assert exact == result, line  # divisions are exact
        out.append((left, op, right, result))
    return out, int(last.removeprefix("#### "))


# --------------------------------------------------------------------------- the generator


def test_same_seed_same_problems_and_seeds_differ() -> None:
    d = Difficulty(max_number=50, steps=3)
    assert generate_problems(20, 7, d) == generate_problems(20, 7, d)
    assert [p.prompt for p in generate_problems(20, 7, d)] != [p.prompt for p in generate_problems(20, 8, d)]


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("ops", [("+", "-", "*", "/"), ("+",), ("-",), ("*",), ("/",), ("+", "/")])
def test_answers_recompute_from_the_solution(steps: int, ops: tuple[str, ...]) -> None:
    """Each step line `a op b = c` is exact, chains into the next (its c is the next a), uses an allowed
    operation, keeps every quantity >= 2, and the last result is the `#### N`, the answer, and `verify`'s."""
    for p in generate_problems(40, steps, Difficulty(max_number=100, operations=ops, steps=steps)):
        lines, final = replay(p.solution)
        assert len(lines) == steps
        for (_, _, _, result), (left, _, _, _) in zip(lines, lines[1:], strict=False):
            assert result == left
        assert all(op in ops for _, op, _, _ in lines)
        assert all(q >= 2 for left, _, _, result in lines for q in (left, result))
        assert final == lines[-1][3] and p.answer == str(final)
        assert verify(p.solution, p.answer).correct
        assert p.source == "generated" and p.prompt.endswith("?")


def test_difficulty_changes_number_sizes_and_steps() -> None:
    """max_number=10: starts and +/- operands <= 10, factors <= isqrt(10) + 1 = 4; max_number=1000: factors
    up to 32 and much larger numbers; `steps` sets the number of step lines."""
    small = generate_problems(200, 0, Difficulty(max_number=10, steps=2))
    large = generate_problems(200, 0, Difficulty(max_number=1000, steps=2))
    for p in small:
        for _, op, right, _ in replay(p.solution)[0]:
            assert right <= (10 if op in "+-" else 4)
        assert replay(p.solution)[0][0][0] <= 10
    biggest = max(int(p.answer) for p in large)
    assert max(int(p.answer) for p in small) <= 10 * 4 < biggest
    for steps in (1, 4):
        assert all(p.solution.count("Step ") == steps for p in generate_problems(10, 1, Difficulty(steps=steps)))


def test_stories_use_every_template() -> None:
    """At least 8 story templates, and a few hundred problems use them all."""
    assert len(TEMPLATES) >= 8
    openings = {t.opening.split("{a}")[1] for t in TEMPLATES}  # the text after the start number
    prompts = [p.prompt for p in generate_problems(300, 0, Difficulty())]
    assert all(any(o in p for p in prompts) for o in openings)


def test_bad_difficulty_is_refused() -> None:
    with pytest.raises(UserError, match="operations"):
        Difficulty(operations=("^",))
    with pytest.raises(UserError, match="steps"):
        Difficulty(steps=5)
    with pytest.raises(UserError, match="max_number"):
        Difficulty(max_number=1)
    with pytest.raises(UserError, match="no problem"):  # only / on starts up to 4 with factors up to 3
        generate_problems(1, 0, Difficulty(max_number=4, operations=("/",), steps=4))


# --------------------------------------------------------------------------- train/test split


def test_train_test_never_overlap() -> None:
    train, test = train_test_split(3, 200, 100, Difficulty(max_number=20, steps=1))
    assert len(train) == 200 and len(test) == 100
    assert train[17].problem_id == "train-00017" and test[3].problem_id == "test-00003"
    prompts = [normalize_prompt(p.prompt) for p in train + test]
    assert len(set(prompts)) == 300  # distinct within each split and across them
    assert not {p.problem_id for p in train} & {p.problem_id for p in test}
    assert train_test_split(3, 200, 100, Difficulty(max_number=20, steps=1)) == (train, test)


def test_split_too_large_for_the_difficulty_is_a_clear_error() -> None:
    """max_number=3, only +, one step: start 2..3, operand 2..3: few distinct problems for 10 stories x 20 names."""
    with pytest.raises(UserError, match="distinct problems found"):
        train_test_split(0, 5000, 2000, Difficulty(max_number=3, operations=("+",), steps=1), patience=500)


# --------------------------------------------------------------------------- problem files


def test_load_both_formats(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "What is 2 + 2?", "answer": "4"},
            {"id": "q7", "prompt": "Half of 5?", "answer": 2.5, "solution": "5 / 2 = 2.5\n#### 2.5"},
            "",
            {"question": "Tom has 3 bags of 4 apples. How many?", "answer": "3 * 4 = 12\n#### 1,2000"},
            {"question": "Cost?", "answer": "It costs <<2*3=6>>6 dollars.\n#### $6.00"},
        ],
    )
    # `1,2000` is not a thousands grouping: that row is refused, so fix it
    with pytest.raises(DataError, match=r"mixed\.jsonl:4: field 'answer' is not a number"):
        load_problem_file(path)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    rows[2]["answer"] = "3 * 4 = 12\n#### 12"
    write_rows(path, rows)
    problems = load_problem_file(path)
    assert problems[0] == Problem("mixed-00000", "What is 2 + 2?", "4", "", "mixed.jsonl")
    assert problems[1].problem_id == "q7" and problems[1].answer == "2.5"
    assert problems[2] == Problem("mixed-00002", rows[2]["question"], "12", rows[2]["answer"], "mixed.jsonl")
    assert problems[3].answer == "6" and problems[3].solution.endswith("#### $6.00")


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"answer": "4"}, "prompt"),
        ({"prompt": "", "answer": "4"}, "prompt"),
        ({"prompt": "2 + 2?"}, "answer"),
        ({"prompt": "2 + 2?", "answer": "four"}, "answer"),
        ({"prompt": "2 + 2?", "answer": True}, "answer"),
        ({"prompt": "2 + 2?", "answer": "4", "solution": 4}, "solution"),
        ({"question": "2 + 2?", "answer": "It is 4."}, "answer"),
        ({"question": "2 + 2?", "answer": "2 + 2 = 4\n#### four"}, "answer"),
    ],
)
def test_bad_row_is_one_line_naming_file_line_and_field(tmp_path: Path, row: dict[str, Any], field: str) -> None:
    path = write_rows(tmp_path / "probs.jsonl", [{"prompt": "1 + 1?", "answer": 2}, "", row])
    with pytest.raises(DataError) as e:
        load_problem_file(path)
    message = str(e.value)
    assert "\n" not in message
    assert "probs.jsonl:3:" in message and f"'{field}'" in message


def test_duplicate_ids_empty_and_broken_files(tmp_path: Path) -> None:
    dup = write_rows(tmp_path / "dup.jsonl", [{"id": "a", "prompt": "x?", "answer": 1}] * 2)
    with pytest.raises(DataError, match=r"dup\.jsonl:2: duplicate id 'a' \(first on line 1\)"):
        load_problem_file(dup)
    with pytest.raises(DataError, match="no problems"):
        load_problem_file(write_rows(tmp_path / "empty.jsonl", ["", ""]))
    with pytest.raises(DataError, match=r"bad\.jsonl:1: invalid JSON"):
        load_problem_file(write_rows(tmp_path / "bad.jsonl", ["{not json"]))


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    train, _ = train_test_split(0, 25, 0, Difficulty(steps=3))
    path = tmp_path / "out" / "train.jsonl"
    assert write_problem_file(path, train) == 25
    assert load_problem_file(path) == [Problem(p.problem_id, p.prompt, p.answer, p.solution, p.source) for p in train]
