"""The rows that stages write and read, one JSON object per line. Every row carries its ids
(`prompt_id`, `candidate_id`) so joins between files are explicit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Prompt:
    """A kept prompt (`prompts.jsonl`)."""

    prompt_id: str
    """`i{iteration}-p{index}`: unique within a run."""
    text: str
    source: str
    """Where it came from: `self-instruct` (written by the model)."""
    instruction_id_list: list[str] = field(default_factory=list)
    """Checkable instructions the prompt carries (IFEval ids, `constraints.checkers`); empty: none."""
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    """The arguments of each instruction (parallel to `instruction_id_list`)."""
    base: str = ""
    """With instructions added by our generator: the prompt before them (the model's own prompt)."""


@dataclass
class RejectedPrompt:
    """A generated prompt that the filters dropped (`prompts_rejected.jsonl`)."""

    text: str
    reason: str
    """empty, too_short, too_long, truncated, template_fragment, not_text, eval_prompt (a duplicate or
    near duplicate of an evaluation prompt), duplicate, near_duplicate."""
    detail: str = ""
    """For near duplicates: the most similar prompt and the ROUGE-L score."""


@dataclass
class Candidate:
    """One sampled response to a prompt (`candidates.jsonl`)."""

    candidate_id: str
    """`{prompt_id}-c{index}`."""
    prompt_id: str
    text: str
    num_tokens: int
    finish_reason: str
    """`stop` or `length` (cut at max_tokens)."""


@dataclass
class JudgeSample:
    """One judgement of one candidate."""

    text: str
    """The judge's raw output (in probabilities mode: the justification)."""
    score: float | None
    """0-5; None when the output could not be parsed (never turned into a score)."""
    error: str | None = None
    """Why there is no score: no_score_line, not_an_integer, out_of_range (sampled mode),
    low_digit_mass (probabilities and direct modes), too_long (the judge prompt does not fit the context)."""
    probs: list[float] | None = None
    """Probabilities and direct modes: P(score = 0..5) after the prefilled `Score: `, renormalised over
    the six digits."""
    digit_mass: float | None = None
    """Probabilities and direct modes: the probability of the six digit tokens before renormalising
    (softmax over the whole vocabulary); how much the judge meant to answer with a digit at all."""


@dataclass
class Judgement:
    """All K judge samples of one candidate and their mean (`judgements.jsonl`)."""

    candidate_id: str
    prompt_id: str
    score: float | None
    """Mean of the parsed sample scores; None when none parsed (in sampled mode: fewer than ceil(K/2))."""
    num_parsed: int
    samples: list[JudgeSample] = field(default_factory=list)
    checks: ConstraintChecks | None = None
    """For a prompt with checkable instructions: the checkers' verdicts on the candidate (never seen by the judge)."""


@dataclass
class ConstraintChecks:
    """The checkers' verdicts on one answer to a prompt with checkable instructions (`constraints.checkers`)."""

    strict: list[bool]
    """Per instruction of the prompt (in its order): followed, strictly."""
    loose: list[bool]
    """The same, IFEval's loose way (markdown `*` and the first or last line may be removed)."""

    @property
    def passed(self) -> int:
        return sum(self.strict)


@dataclass
class PreferencePair:
    """A DPO pair in TRL's conversational preference format plus metadata (`pairs.jsonl`)."""

    prompt: list[dict[str, str]]
    """[{"role": "user", "content": ...}]"""
    chosen: list[dict[str, str]]
    """[{"role": "assistant", "content": ...}]"""
    rejected: list[dict[str, str]]
    prompt_id: str
    chosen_id: str
    rejected_id: str
    chosen_score: float
    rejected_score: float
    margin: float
    chosen_tokens: int
    rejected_tokens: int
    noise_band: float = 0.0
    """The margin the pair had to beat: pairs.noise_z * sqrt(se_chosen^2 + se_rejected^2)."""
    source: str = "judge"
    """Who picked it (`pairs.source`): `judge`, `checker` (chosen follows more checkable instructions), or
    `judge_checked` (the judge's pair, its chosen answer passing every instruction another candidate passes)."""
    chosen_passed: int = -1
    """For a prompt with checkable instructions: how many the chosen answer follows (strict); -1: none."""
    rejected_passed: int = -1


@dataclass
class MetaJudgement:
    """The meta-judge on two judgements of one candidate (`meta_judgements.jsonl`): which it prefers, in both
    orders, or why the candidate gave no judge-role pair."""

    candidate_id: str
    prompt_id: str
    sample_a: int
    """Index (in the candidate's judge samples) of the first judgement compared, -1 when none was."""
    sample_b: int
    score_a: float | None
    score_b: float | None
    p_a_first: float | None = None
    """P(` A`) renormalised over ` A`/` B` with judgement `sample_a` shown as A."""
    p_a_second: float | None = None
    """The same with `sample_a` shown as B (so a consistent preference for it gives p_a_second < 0.5)."""
    preferred: int | None = None
    """`sample_a` or `sample_b` when the verdict holds in both orders, else None."""
    dropped: str | None = None
    """unparsed (fewer than two parsed judgements), same_score (every parsed judgement gives one score),
    too_long (a meta prompt does not fit the context), inconsistent (the verdict flips with the order)."""


@dataclass
class JudgePair:
    """A judge-role DPO pair (`judge_pairs.jsonl`): the judge prompt of one candidate, the judgement the
    meta-judge preferred (chosen) and the other one (rejected)."""

    prompt: list[dict[str, str]]
    """[{"role": "user", "content": the judge prompt}]"""
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    prompt_id: str
    candidate_id: str
    chosen_sample: int
    rejected_sample: int
    chosen_score: float
    """The score the chosen judgement gave the answer (not a preference strength)."""
    rejected_score: float
    consistency: float
    """How far both orders agree: min over the two orders of the preferred judgement's probability."""


@dataclass
class VerifiedAnswer:
    """One answer to a problem with a checkable answer, verified (`selfreward reason`: candidates.jsonl of a
    round, eval.jsonl of a measurement)."""

    problem_id: str
    index: int
    """Its position among the problem's samples."""
    text: str
    tokens: int
    finish_reason: str
    correct: bool
    predicted: str | None
    """The final answer read from the text (`reason.verifier`), None when unreadable."""
    reason: str | None
    """Why no answer could be read; None when one was."""


def to_row(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def required_fields(cls: type) -> list[str]:
    """Fields without defaults: what a row of this record must have."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
