"""Problems with checkable answers: our own generator of arithmetic word problems, disjoint train/test
splits, and problem files (reads and writes JSONL; loads no model).

Generator (`generate_problems`, `train_test_split`). A problem is a short story about one running quantity
(stickers, money, kilometres, ages, ...): it starts at a number and each of `steps` sentences applies one
operation with a new number; the question asks for the final quantity. Ten story templates are written
here by us (no dataset text). Every quantity in the story is an integer of at least 2 (never negative,
never a lone `1 boxes`): divisions are exact and nothing is subtracted below 2. Numbers are drawn from a
`Difficulty`:

    start, +/- operands    2 .. max_number
    * and / factors        2 .. isqrt(max_number) + 1 (at most max_number)
    every quantity         2 .. max_number * that largest factor (ages stop at 120)

The worked solution has one line per step and ends with the answer line:

    Step 1: 12 * 3 = 36 stickers.
    Step 2: 36 - 5 = 31 stickers.
    #### 31

Everything is drawn from one `random.Random(seed)`, so a seed and a difficulty give the same problems.

Problem files (`load_problem_file`, `write_problem_file`): JSONL, one problem a line, in either form

    {"prompt": str, "answer": str | int, "id"?: str, "solution"?: str, "source"?: str}
    {"question": str, "answer": "worked solution ... #### N"}          (GSM8K style)

In the second, `answer` becomes N (normalised, `verifier.format_number`) and `solution` the whole text.
An answer must read as a number (`verifier.normalize_number`). The id is `problem_id` or `id`, else
`<file stem>-<index>`; written files use `problem_id`. A bad row, a duplicate id or an empty file is a
`DataError` naming file:line and the field.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from math import isqrt
from pathlib import Path
from typing import Any

from selfreward.artifacts import DataError, iter_jsonl, project_file, write_jsonl
from selfreward.errors import UserError
from selfreward.reason.verifier import format_number, normalize_number

OPERATIONS = ("+", "-", "*", "/")
MAX_STEPS = 4


@dataclass
class Problem:
    """One problem with a checkable final answer."""

    problem_id: str
    """`train-00017`, `test-00003` (generated splits), `gen-00005` (`generate_problems`), or the file's id."""
    prompt: str
    """The question as the model sees it."""
    answer: str
    """The reference final answer, a number in canonical form (`verifier.format_number`): `36`, `2.5`, `1/3`."""
    solution: str
    """A worked step-by-step reference solution whose last line is `#### N`; empty for user files without one."""
    source: str
    """Where it came from: `generated` or the file name."""


@dataclass(frozen=True)
class Difficulty:
    """The knob of the generator."""

    max_number: int = 100
    """The largest starting number and +/- operand; factors of * and / go up to isqrt(max_number) + 1."""
    operations: tuple[str, ...] = OPERATIONS
    """The operations a step may use, a subset of `+`, `-`, `*`, `/`."""
    steps: int = 2
    """Operations per problem, 1..4: each is one sentence of the story and one line of the solution."""

    def __post_init__(self) -> None:
        if isinstance(self.max_number, bool) or not isinstance(self.max_number, int) or self.max_number < 2:
            raise UserError(f"difficulty.max_number must be an integer >= 2, got {self.max_number!r}")
        ops = tuple(self.operations)
        if not ops or any(op not in OPERATIONS for op in ops) or len(set(ops)) != len(ops):
            raise UserError(f"difficulty.operations must be distinct items of {list(OPERATIONS)}, got {list(ops)}")
        object.__setattr__(self, "operations", ops)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise UserError(f"difficulty.steps must be an integer in 1..{MAX_STEPS}, got {self.steps!r}")

    @property
    def max_factor(self) -> int:
        """The largest factor of a * or / step."""
        return max(2, min(self.max_number, isqrt(self.max_number) + 1))


# --------------------------------------------------------------------------- story templates


@dataclass(frozen=True)
class StoryTemplate:
    """One story: its opening (the start number `{a}`), a sentence per operation (operand `{x}`) and the question.

    Sentences may use `{name}`, `{x}`, `{frac}` (`half`, `a third`, ... of x), `{item}` (one of `items`), and
    with `labels`, `{label}` (who or when this step is about, first mention), `{prev}` (the previous step's short
    label) and, in the question, `{last}` (the last step's short label)."""

    key: str
    opening: str
    steps: dict[str, str]
    question: str
    unit: str
    """What a solution line counts; may use `{last}` (`years, Theo's age`)."""
    items: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    """(first mention, short name) for the start and each step: 1 + MAX_STEPS entries."""
    max_value: int | None = None
    """A bound on every quantity tighter than the difficulty's (ages)."""


TEMPLATES: tuple[StoryTemplate, ...] = (
    StoryTemplate(
        key="stickers",
        opening="{name} has {a} stickers in an album.",
        steps={
            "+": "{name} then buys a pack of {x} more stickers.",
            "-": "{name} then gives {x} stickers to a friend.",
            "*": "A sticker swap goes so well that {name} ends up with {x} times as many stickers as before.",
            "/": "{name} then sorts the stickers into {x} equal piles and keeps just one pile.",
        },
        question="How many stickers does {name} have now?",
        unit="stickers",
    ),
    StoryTemplate(
        key="shopping",
        opening="{name} goes to the market with ${a}.",
        steps={
            "+": "{name} finds another ${x} in a coat pocket.",
            "-": "{name} spends ${x} on {item}.",
            "*": "{name} sells an old bicycle and now has {x} times as much money as before.",
            "/": "{name} splits the money equally into {x} envelopes and takes only one envelope along.",
        },
        question="How many dollars does {name} have with them now?",
        unit="dollars",
        items=("a scarf", "a book", "fresh bread", "a phone case", "a board game", "some plums", "a lamp"),
    ),
    StoryTemplate(
        key="cookies",
        opening="{name} bakes {a} cookies for a class party.",
        steps={
            "+": "A neighbour brings over {x} more cookies.",
            "-": "{x} of the cookies crack in the oven and are thrown away.",
            "*": "{name} bakes more batches until there are {x} times as many cookies as before.",
            "/": "{name} shares the cookies equally among {x} tables and carries one table's share to the party.",
        },
        question="How many cookies does {name} carry to the party?",
        unit="cookies",
    ),
    StoryTemplate(
        key="courier",
        opening="On Monday, a courier drives {a} km.",
        steps={
            "+": "On {label}, the courier drives {x} km more than on {prev}.",
            "-": "On {label}, the courier drives {x} km less than on {prev}.",
            "*": "On {label}, the courier drives {x} times as far as on {prev}.",
            "/": "On {label}, the courier drives only {frac} of the distance driven on {prev}.",
        },
        question="How many kilometres does the courier drive on {last}?",
        unit="km on {last}",
        labels=(
            ("Monday", "Monday"),
            ("Tuesday", "Tuesday"),
            ("Wednesday", "Wednesday"),
            ("Thursday", "Thursday"),
            ("Friday", "Friday"),
        ),
    ),
    StoryTemplate(
        key="model_train",
        opening="A model train runs at {a} cm per second.",
        steps={
            "+": "With a fresh battery it runs {x} cm per second faster.",
            "-": "On an uphill section it runs {x} cm per second slower than that.",
            "*": "In turbo mode it runs {x} times as fast as that.",
            "/": "In shunting mode its speed drops to {frac} of that.",
        },
        question="What is the train's final speed, in cm per second?",
        unit="cm per second",
    ),
    StoryTemplate(
        key="savings",
        opening="{name} has saved ${a} in a piggy bank.",
        steps={
            "+": "{name} adds ${x} earned by walking a neighbour's dog.",
            "-": "{name} takes out ${x} to buy {item}.",
            "*": "A savings scheme at school leaves {name} with {x} times the amount in the piggy bank.",
            "/": "{name} divides the savings equally into {x} jars and leaves only one jar in the piggy bank.",
        },
        question="How many dollars are in the piggy bank now?",
        unit="dollars",
        items=("a birthday present", "a ticket to a show", "paints", "a football"),
    ),
    StoryTemplate(
        key="warehouse",
        opening="A warehouse shelf holds {a} boxes of light bulbs.",
        steps={
            "+": "A truck delivers {x} more boxes to the shelf.",
            "-": "Workers send {x} boxes from the shelf to a shop.",
            "*": "Each box on the shelf is repacked into {x} smaller boxes, which stay on the shelf.",
            "/": "The boxes are spread evenly over {x} shelves, and only one of them stays in this aisle.",
        },
        question="How many boxes are on the shelf in this aisle now?",
        unit="boxes",
    ),
    StoryTemplate(
        key="ages",
        opening="{name} is {a} years old.",
        steps={
            "+": "{label} is {x} years older than {prev}.",
            "-": "{label} is {x} years younger than {prev}.",
            "*": "{label} is {x} times as old as {prev}.",
            "/": "{prev} is exactly {x} times as old as {label}.",
        },
        question="How old is {last}?",
        unit="years, {last}'s age",
        labels=(
            ("{name}", "{name}"),
            ("{name}'s brother Theo", "Theo"),
            ("their cousin Ada", "Ada"),
            ("their aunt Ruth", "Ruth"),
            ("their grandfather Sol", "Sol"),
        ),
        max_value=120,
    ),
    StoryTemplate(
        key="garden",
        opening="{name} plants {a} tulip bulbs in the spring.",
        steps={
            "+": "A friend gives {name} {x} more bulbs, and they are planted too.",
            "-": "A squirrel digs up {x} of the bulbs and carries them off.",
            "*": "By the next year every bulb left has split into {x} bulbs.",
            "/": "{name} shares the bulbs equally among {x} gardeners, {name} included, and keeps one share.",
        },
        question="How many bulbs does {name} have at the end?",
        unit="bulbs",
    ),
    StoryTemplate(
        key="library",
        opening="A school library cart holds {a} books.",
        steps={
            "+": "Students return {x} more books to the cart.",
            "-": "The librarian puts {x} books from the cart back on the shelves.",
            "*": "A donation arrives, and the cart is refilled until it holds {x} times as many books as before.",
            "/": "The books are split equally into {x} piles, and only one pile stays on the cart.",
        },
        question="How many books are on the cart now?",
        unit="books",
    ),
)

NAMES = (
    "Amara", "Ben", "Chiara", "Dev", "Elif", "Finn", "Grace", "Hiro", "Ines", "Jonah",
    "Kalani", "Luca", "Maya", "Nils", "Oona", "Priya", "Rafael", "Sana", "Tomas", "Yusuf",
)  # fmt: skip

_FRACTION_WORDS = {
    2: "half",
    3: "a third",
    4: "a quarter",
    5: "a fifth",
    6: "a sixth",
    7: "a seventh",
    8: "an eighth",
    9: "a ninth",
    10: "a tenth",
    11: "an eleventh",
    12: "a twelfth",
}


def fraction_word(x: int) -> str:
    """`half`, `a third`, ... `a twelfth` of 2..12; `1/x` beyond."""
    return _FRACTION_WORDS.get(x, f"1/{x}")


def _sentence(template: str, **keys: Any) -> str:
    text = template.format(**keys)
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------- the generator


def _operand(op: str, value: int, rng: random.Random, difficulty: Difficulty, cap: int) -> int | None:
    """A random operand for `value op x` that keeps every quantity in 2..cap, or None if there is none."""
    if op == "+":
        hi = min(difficulty.max_number, cap - value)
        return rng.randint(2, hi) if hi >= 2 else None
    if op == "-":
        hi = min(difficulty.max_number, value - 2)
        return rng.randint(2, hi) if hi >= 2 else None
    if op == "*":
        hi = min(difficulty.max_factor, cap // value)
        return rng.randint(2, hi) if hi >= 2 else None
    divisors = [x for x in range(2, difficulty.max_factor + 1) if value % x == 0 and value // x >= 2]
    return rng.choice(divisors) if divisors else None


def _apply(op: str, value: int, x: int) -> int:
    return {"+": value + x, "-": value - x, "*": value * x, "/": value // x}[op]


def _draw(rng: random.Random, difficulty: Difficulty) -> tuple[str, str, str] | None:
    """One attempt at a problem: (prompt, answer, solution), or None when the drawn start number admits no
    operation at some step (e.g. only `/` is allowed and the number is prime)."""
    tpl = rng.choice(TEMPLATES)
    name = rng.choice(NAMES)
    cap = difficulty.max_number * difficulty.max_factor
    if tpl.max_value is not None:
        cap = min(cap, tpl.max_value)
    value = rng.randint(2, min(difficulty.max_number, cap))
    labels = [(intro.format(name=name), short.format(name=name)) for intro, short in tpl.labels]
    sentences = [_sentence(tpl.opening, name=name, a=value)]
    lines = []
    for step in range(1, difficulty.steps + 1):
        ops = list(difficulty.operations)
        rng.shuffle(ops)
        for op in ops:
            x = _operand(op, value, rng, difficulty, cap)
            if x is not None:
                break
        else:
            return None
        new = _apply(op, value, x)
        keys: dict[str, Any] = {"name": name, "x": x, "frac": fraction_word(x)}
        if tpl.items:
            keys["item"] = rng.choice(tpl.items)
        if labels:
            keys["label"], keys["prev"] = labels[step][0], labels[step - 1][1]
        sentences.append(_sentence(tpl.steps[op], **keys))
        last = labels[step][1] if labels else ""
        lines.append(f"Step {step}: {value} {op} {x} = {new} {tpl.unit.format(last=last)}.")
        value = new
    last = labels[difficulty.steps][1] if labels else ""
    sentences.append(_sentence(tpl.question, name=name, last=last))
    lines.append(f"#### {value}")
    return " ".join(sentences), str(value), "\n".join(lines)


def _stream(rng: random.Random, difficulty: Difficulty, max_failures: int = 1000) -> Iterator[tuple[str, str, str]]:
    """Problems without end; a UserError when `max_failures` draws in a row admit no problem."""
    failures = 0
    while True:
        drawn = _draw(rng, difficulty)
        if drawn is None:
            failures += 1
            if failures >= max_failures:
                raise UserError(f"{difficulty}: {max_failures} draws in a row gave no problem; allow more operations")
            continue
        failures = 0
        yield drawn


def generate_problems(n: int, seed: int, difficulty: Difficulty) -> list[Problem]:
    """`n` generated problems (`gen-00000`, ...), the same for the same seed and difficulty; may repeat a prompt
    (`train_test_split` removes repeats)."""
    stream = _stream(random.Random(seed), difficulty)
    return [Problem(f"gen-{i:05d}", *next(stream), source="generated") for i in range(n)]


def normalize_prompt(text: str) -> str:
    """The form in which two prompts count as the same: lower case, runs of whitespace as one space."""
    return re.sub(r"\s+", " ", text).strip().lower()


def train_test_split(
    seed: int, n_train: int, n_test: int, difficulty: Difficulty, patience: int = 5000
) -> tuple[list[Problem], list[Problem]]:
    """Disjoint train and test problems: the generator's stream with repeated prompts (`normalize_prompt`)
    dropped, the first `n_train` distinct problems to train (`train-00000`, ...), the next `n_test` to test
    (`test-00000`, ...), so no test prompt equals a train prompt. A UserError when `patience` draws in a row
    bring no new prompt (the difficulty has too few distinct problems)."""
    if n_train < 0 or n_test < 0:
        raise UserError(f"train/test sizes must be >= 0, got {n_train}, {n_test}")
    seen: set[str] = set()
    distinct: list[tuple[str, str, str]] = []
    stale = 0
    stream = _stream(random.Random(seed), difficulty)
    while len(distinct) < n_train + n_test:
        prompt, answer, solution = next(stream)
        key = normalize_prompt(prompt)
        if key in seen:
            stale += 1
            if stale >= patience:
                raise UserError(
                    f"{difficulty}: only {len(distinct)} distinct problems found, {n_train} + {n_test} asked; "
                    "raise max_number, steps or operations, or ask for fewer"
                )
            continue
        stale = 0
        seen.add(key)
        distinct.append((prompt, answer, solution))
    train = [Problem(f"train-{i:05d}", *row, source="generated") for i, row in enumerate(distinct[:n_train])]
    test = [Problem(f"test-{i:05d}", *row, source="generated") for i, row in enumerate(distinct[n_train:])]
    return train, test


# --------------------------------------------------------------------------- problem files


def _text_field(row: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    if key not in row:
        if required:
            raise DataError(f"{where}: missing field '{key}'")
        return ""
    value = row[key]
    if not isinstance(value, str) or (required and not value.strip()):
        raise DataError(f"{where}: field '{key}' must be a non-empty string, got {value!r:.60}")
    return value


def _answer(value: Any, where: str, field: str = "answer") -> str:
    """A reference answer (string or number) in canonical form, or a DataError."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field '{field}' must be a number or a string holding one, got {value!r:.60}")
    number, _ = normalize_number(str(value))
    if number is None:
        raise DataError(f"{where}: field '{field}' is not a number: {str(value)!r:.60}")
    return format_number(number)


def parse_problem_row(row: dict[str, Any], where: str, default_id: str, source: str) -> Problem:
    """One row of a problem file (either form, see the module docstring); errors name `where` and the field."""
    if "question" in row and "prompt" not in row:
        prompt = _text_field(row, "question", where)
        solution = _text_field(row, "answer", where)
        finals = re.findall(r"####[ \t]*([^\n]*)", solution)
        if not finals:
            raise DataError(f"{where}: field 'answer' must end with a final line '#### N' (GSM8K style)")
        answer = _answer(finals[-1].strip(), where)
    else:
        prompt = _text_field(row, "prompt", where)
        if "answer" not in row:
            raise DataError(f"{where}: missing field 'answer'")
        answer = _answer(row["answer"], where)
        solution = _text_field(row, "solution", where, required=False)
    pid = row.get("problem_id", row.get("id", default_id))
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
        raise DataError(f"{where}: field 'id' must be a non-empty string, got {pid!r:.60}")
    src = row.get("source", source)
    if not isinstance(src, str):
        raise DataError(f"{where}: field 'source' must be a string, got {src!r:.60}")
    return Problem(str(pid), prompt, answer, solution, src)


def load_problem_file(path: str | Path) -> list[Problem]:
    """Problems from JSONL ({prompt, answer} or GSM8K-style {question, answer}); a bad row, a duplicate id or
    an empty file is a DataError naming file:line and the field."""
    path = project_file(path)
    problems: list[Problem] = []
    lines: dict[str, int] = {}
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        problem = parse_problem_row(row, where, f"{path.stem}-{len(problems):05d}", path.name)
        if problem.problem_id in lines:
            raise DataError(
                f"{where}: duplicate id '{problem.problem_id}' (first on line {lines[problem.problem_id]})"
            )
        lines[problem.problem_id] = lineno
        problems.append(problem)
    if not problems:
        raise DataError(f"{path}: no problems")
    return problems


def write_problem_file(path: str | Path, problems: list[Problem]) -> int:
    """Write problems as JSONL (atomically), one `{problem_id, prompt, answer, solution, source}` a line, a
    file `load_problem_file` reads back; returns the number written."""
    return write_jsonl(Path(path), (dataclasses.asdict(p) for p in problems))
