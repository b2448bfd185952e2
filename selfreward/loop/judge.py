"""Stage 3: the model judges its own candidates (LLM-as-a-Judge, additive 5-point rubric).

Reads  iter_K/prompts.jsonl, iter_K/candidates.jsonl (and anchors.jsonl with `pairs.rejected_from: initial`)
Writes iter_K/judgements.jsonl: per candidate, K judge samples (raw text, parsed score or the
       parse error) and their mean.

The judge prompt is `prompts/judge.txt` (our wording of the rubric of Yuan et al. 2024).
Three modes (config `judge.mode`):
- `sampled`: the paper's method: sample K judgements, parse the final `Score: N` line of each.
  A judgement that does not parse is kept with its raw text and excluded from the mean; a candidate
  needs at least ceil(K/2) parsed samples to be scored (else its score is None), so one lucky
  sample of K never stands for the judge's verdict.
- `probabilities`: sample K justifications (stopped before `Score`), prefill `Score: ` and take
  the expected value of the next-token distribution over the digits 0-5.
- `direct`: prefill `Score: ` right after the judge prompt, no justification: one forward pass per
  candidate and one sample (K is not used).
- `pairwise`: each candidate against each other candidate of its prompt, in both orders, with a comparison
  template (`judge.pairwise_template`): the probability of ` A` vs ` B` after `Better answer:`; a candidate's
  score is 5 x its mean win probability (one sample per comparison, so its standard error is the noise band).
  Small models have been reported to judge better by such preferences than by written scores.
In both probability modes a sample records `digit_mass`, the probability the model put on the six
digit tokens at all (softmax over the whole vocabulary); below `judge.min_digit_mass` the sample is
unscored (`low_digit_mass`): a model that would not have answered with a digit gets no score.

The judge's text safety (what embedded text may contain, how a score is parsed, templates) is
`selfreward.judge_text`: the response cannot score itself.

`judge_texts()` is the one code path used by the loop and by judge evaluation.
"""

from __future__ import annotations

import dataclasses
import logging

from selfreward.artifacts import IterPaths, read_jsonl, write_jsonl
from selfreward.config import ConfigError, JudgeConfig
from selfreward.constraints.agreement import judge_checker_agreement
from selfreward.constraints.checkers import check_prompt
from selfreward.generation import Generator, SamplingSpec, engine_settings
from selfreward.judge_text import (
    MAX_SCORE,
    VERDICT_PREFILL,
    evaluator_directed_share,
    load_pairwise_template,
    load_template,
    parse_score,
    render_judge_prompt,
    render_pairwise_prompt,
    strip_evaluator_directed,
)
from selfreward.records import Candidate, ConstraintChecks, Judgement, JudgeSample, Prompt, required_fields, to_row
from selfreward.runs import Stage
from selfreward.stats import mean

log = logging.getLogger(__name__)

STAGE = Stage(
    "judgements",
    config=lambda cfg: (cfg.judge, engine_settings(cfg.engine)),
    files=lambda cfg: [cfg.judge.template, cfg.judge.pairwise_template if cfg.judge.mode == "pairwise" else ""],
    reads=("prompts", "candidates"),
    writes=("judgements",),
)
"""Its fingerprint: judge and engine settings, the judge template, the prompts (their checkable instructions)
and candidates; the judging model is passed by the pipeline."""

SCORE_PREFILL = "Score: "
PROBABILITY_CHUNK = 32
"""Probabilities mode: conversations whose justifications are sampled, then scored, together."""
DIGIT_ERROR = "low_digit_mass"


def digit_token_ids(gen: Generator, prefill: str = SCORE_PREFILL) -> list[int]:
    """Token ids of the digits 0-5 as the tokenizer writes them right after `prefill`."""
    return choice_token_ids(gen, prefill, [str(d) for d in range(MAX_SCORE + 1)])


def choice_token_ids(gen: Generator, prefill: str, choices: list[str]) -> list[int]:
    """Token id of each choice as the tokenizer writes it right after `prefill` (one token each)."""
    base = gen.encode(prefill)
    ids = []
    for choice in choices:
        full = gen.encode(prefill + choice)
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise ValueError(f"the tokenizer does not write {prefill + choice!r} as the prefill plus one token")
        ids.append(full[-1])
    return ids


def judge_texts(gen: Generator, cfg: JudgeConfig, items: list[tuple[str, str]], seed: int = 0) -> list[Judgement]:
    """Judge (instruction, response) pairs; returns one Judgement per item (ids left empty)."""
    if cfg.mode == "pairwise":
        raise ConfigError(
            "judge.mode=pairwise compares the candidates of a prompt with each other (the loop's judge stage); "
            "here each answer is judged alone: choose sampled, probabilities or direct"
        )
    template = load_template(cfg.template)
    if cfg.strip_directed:
        items = [(q, strip_evaluator_directed(r)) for q, r in items]
    conversations = [[{"role": "user", "content": render_judge_prompt(template, q, r)}] for q, r in items]
    spec = SamplingSpec(
        n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed
    )
    # A judge prompt longer than the context cannot be judged: its samples are failures (`too_long`).
    fits = [gen.fits(gen.render_chat(conv), cfg.max_tokens + 2) for conv in conversations]
    if not all(fits):
        log.warning(
            "judge: %d of %d judge prompts do not fit in the context; left unscored", fits.count(False), len(fits)
        )
    kept = [conv for conv, ok in zip(conversations, fits, strict=True) if ok]
    judged = iter(_judge_samples(gen, cfg, kept, spec) if kept else [])
    all_samples = [
        next(judged) if ok else [JudgeSample("", None, "too_long") for _ in range(cfg.samples)] for ok in fits
    ]
    need = min_parsed(cfg)
    judgements = []
    for samples in all_samples:
        mean, parsed = candidate_score([s.score for s in samples], need)
        judgements.append(Judgement("", "", mean, parsed, samples))
    return judgements


def judge_pairwise(gen: Generator, cfg: JudgeConfig, groups: list[tuple[str, list[str]]]) -> list[list[Judgement]]:
    """`pairwise` mode: for each (instruction, the candidates of one prompt), every candidate against every other
    in both orders; one Judgement per candidate (module docstring of `config.JudgeConfig.pairwise_template`)."""
    template = load_pairwise_template(cfg.pairwise_template)
    if cfg.strip_directed:
        groups = [(q, [strip_evaluator_directed(a) for a in answers]) for q, answers in groups]
    ids = choice_token_ids(gen, VERDICT_PREFILL, [" A", " B"])
    requests, where = [], []
    for g, (instruction, answers) in enumerate(groups):
        for i, a in enumerate(answers):
            for j, b in enumerate(answers):
                if i != j:
                    prompt = render_pairwise_prompt(template, instruction, a, b)
                    requests.append(gen.render_chat([{"role": "user", "content": prompt}], VERDICT_PREFILL))
                    where.append((g, i, j))
    fits = [gen.fits(r, 1) for r in requests]
    probs = iter(gen.token_probs([r for r, ok in zip(requests, fits, strict=True) if ok], ids) if any(fits) else [])
    verdicts = {key: (next(probs) if ok else None) for key, ok in zip(where, fits, strict=True)}
    out = []
    for g, (_, answers) in enumerate(groups):
        judged = []
        for i in range(len(answers)):
            samples = []
            for j in range(len(answers)):
                if i != j:
                    samples.append(pairwise_sample(f"vs {j} as A", verdicts[(g, i, j)], True, cfg.min_digit_mass))
                    samples.append(pairwise_sample(f"vs {j} as B", verdicts[(g, j, i)], False, cfg.min_digit_mass))
            mean, parsed = candidate_score([s.score for s in samples], max(1, -(-len(samples) // 2)))
            judged.append(Judgement("", "", mean if samples else None, parsed, samples))
        out.append(judged)
    return out


def pairwise_sample(text: str, raw: list[float] | None, first: bool, min_mass: float) -> JudgeSample:
    """One comparison as a sample of the candidate's score: 5 x the probability that it is the better answer
    (P(A) when it was A, P(B) when it was B), renormalised over the two letters; `low_digit_mass` when the two
    letters had less than `min_mass` of the next token's probability, `too_long` when the prompt did not fit."""
    if raw is None:
        return JudgeSample(text, None, "too_long")
    mass = raw[0] + raw[1]
    probs = [raw[0] / mass, raw[1] / mass] if mass > 0 else [0.5, 0.5]
    if mass <= 0 or mass < min_mass:
        return JudgeSample(text, None, DIGIT_ERROR, probs, mass)
    return JudgeSample(text, MAX_SCORE * (probs[0] if first else probs[1]), None, probs, mass)


def candidate_score(sample_scores: list[float | None], need: int) -> tuple[float | None, int]:
    """A candidate's score from its samples' scores (None: unscored sample): their mean when at least `need`
    parsed (`min_parsed`), else None; and how many parsed."""
    parsed = [x for x in sample_scores if x is not None]
    return (sum(parsed) / len(parsed) if len(parsed) >= need else None), len(parsed)


def min_parsed(cfg: JudgeConfig) -> int:
    """Parsed samples a candidate needs to be scored: ceil(K/2) in sampled mode, else 1 (a probability
    mode's sample is unscored only when its digit mass is too low, which says the same of every sample)."""
    return -(-cfg.samples // 2) if cfg.mode == "sampled" else 1


def _judge_samples(
    gen: Generator, cfg: JudgeConfig, conversations: list[list[dict[str, str]]], spec: SamplingSpec
) -> list[list[JudgeSample]]:
    """K judge samples per conversation: parsed `Score:` lines, or digit probabilities after `Score: `."""
    if cfg.mode == "sampled":
        outputs = gen.chat(conversations, spec)
        return [[JudgeSample(o.text, *parse_score(o.text)) for o in outs] for outs in outputs]
    digits = digit_token_ids(gen)
    if cfg.mode == "direct":
        probs = gen.token_probs([gen.render_chat(conv, SCORE_PREFILL) for conv in conversations], digits)
        return [[digit_sample("", p, cfg.min_digit_mass)] for p in probs]
    spec.stop = ["Score:", "score:", "SCORE:"]
    all_samples = []
    # In chunks, so that vLLM still holds each judge prompt in its prefix cache when the scoring pass
    # re-reads it (all at once, a 4 GiB cache had evicted most of them: the second pass took as long as
    # the first).
    for start in range(0, len(conversations), PROBABILITY_CHUNK):
        chunk = conversations[start : start + PROBABILITY_CHUNK]
        chunk_spec = dataclasses.replace(spec, seed=None if spec.seed is None else spec.seed + start)
        outputs = gen.chat(chunk, chunk_spec)
        prefixed = [
            gen.render_chat(conv) + o.text.rstrip() + ("\n" if o.text.strip() else "") + SCORE_PREFILL
            for conv, outs in zip(chunk, outputs, strict=True)
            for o in outs
        ]
        probs = iter(gen.token_probs(prefixed, digits))
        for outs in outputs:
            all_samples.append([digit_sample(o.text, next(probs), cfg.min_digit_mass) for o in outs])
    return all_samples


def digit_sample(text: str, raw: list[float], min_mass: float) -> JudgeSample:
    """A probability-mode sample from P(digit d) over the whole vocabulary, d = 0..5: the score is the
    expected digit under the distribution renormalised over the six digits, kept only when their mass
    (the sum of `raw`) is at least `min_mass`.

    Example: raw [0, 0, 0.1, 0.3, 0.1, 0] -> mass 0.5, probs [0, 0, 0.2, 0.6, 0.2, 0], score 3.0."""
    mass = sum(raw)
    probs = [p / mass for p in raw] if mass > 0 else list(raw)
    if mass <= 0 or mass < min_mass:
        return JudgeSample(text, None, DIGIT_ERROR, probs, mass)
    return JudgeSample(text, sum(d * p for d, p in enumerate(probs)), None, probs, mass)


def run(gen: Generator, cfg: JudgeConfig, it: IterPaths, seed: int = 0, anchors: bool = False) -> dict:
    """Judge every candidate of the iteration in one batch; returns the stage's metrics. A candidate of a prompt
    with checkable instructions also gets the checkers' verdicts (`checks`), which the judge never sees, and the
    metrics say how often the judge agrees with them (`constraints.agreement`). `anchors`: the initial model's
    answers (anchors.jsonl) are judged with them, into the same file."""
    prompts = {r["prompt_id"]: r for r in read_jsonl(it.prompts, required_fields(Prompt))}
    candidates = read_jsonl(it.candidates, required_fields(Candidate))
    n = len(candidates)  # the current model's; the metrics describe these, comparable across iterations
    if anchors:
        candidates += read_jsonl(it.anchors, required_fields(Candidate))
    items = []
    for c in candidates:
        if c["prompt_id"] not in prompts:
            raise ValueError(f"{it.candidates}: candidate {c['candidate_id']} names unknown prompt {c['prompt_id']}")
        items.append((prompts[c["prompt_id"]]["text"], c["text"]))
    before = gen.prefix_cache()
    if cfg.mode == "pairwise":
        order = list(dict.fromkeys(c["prompt_id"] for c in candidates))
        groups = [(prompts[p]["text"], [c["text"] for c in candidates if c["prompt_id"] == p]) for p in order]
        by_prompt = dict(zip(order, judge_pairwise(gen, cfg, groups), strict=True))
        position = {p: iter(js) for p, js in by_prompt.items()}
        judgements = [next(position[c["prompt_id"]]) for c in candidates]
    else:
        judgements = judge_texts(gen, cfg, items, seed=seed)
    for c, j in zip(candidates, judgements, strict=True):
        j.candidate_id, j.prompt_id = c["candidate_id"], c["prompt_id"]
        prompt = prompts[c["prompt_id"]]
        if prompt.get("instruction_id_list"):
            j.checks = ConstraintChecks(*check_prompt(prompt["instruction_id_list"], prompt["kwargs"], c["text"]))
    rows = [to_row(j) for j in judgements]
    write_jsonl(it.judgements, rows)
    return {
        **judgement_metrics(judgements[:n]),
        "constraints": judge_checker_agreement(rows[:n]),
        "evaluator_directed": evaluator_directed_share([c["text"] for c in candidates[:n]]),
        "prefix_cache": prefix_cache_delta(before, gen.prefix_cache()),
        **({"anchors_judged": len(candidates) - n} if anchors else {}),
    }


def prefix_cache_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float | None] | None:
    """The engine's prefix-cache counters over a stage: prompt tokens looked up, found, and the hit rate (None
    where the engine reports no counters)."""
    if before is None or after is None:
        return None
    queried = after["queried_tokens"] - before["queried_tokens"]
    hit = after["hit_tokens"] - before["hit_tokens"]
    return {"queried_tokens": queried, "hit_tokens": hit, "hit_rate": round(hit / queried, 4) if queried else None}


def judgement_metrics(judgements: list[Judgement]) -> dict:
    samples = [s for j in judgements for s in j.samples]
    failed = [s for s in samples if s.score is None]
    errors: dict[str, int] = {}
    for s in failed:
        errors[s.error or "unknown"] = errors.get(s.error or "unknown", 0) + 1
    histogram = [0] * (MAX_SCORE + 1)
    for j in judgements:
        if j.score is not None:
            histogram[min(MAX_SCORE, int(round(j.score)))] += 1
    masses = [s.digit_mass for s in samples if s.digit_mass is not None]
    return {
        "candidates_judged": len(judgements),
        "judge_samples": len(samples),
        "parse_failures": len(failed),
        "parse_failure_rate": len(failed) / len(samples) if samples else 0.0,
        "parse_errors": errors,
        "unscored_candidates": sum(j.score is None for j in judgements),
        "score_histogram": histogram,
        "mean_score": mean([j.score for j in judgements if j.score is not None]),
        "digit_mass_histogram": mass_histogram(masses) if masses else None,
        "mean_digit_mass": mean(masses),
    }


MASS_BINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def mass_histogram(masses: list[float]) -> dict[str, int]:
    """Counts of digit masses in [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]."""
    counts = {f"{lo:.1f}-{hi:.1f}": 0 for lo, hi in zip(MASS_BINS, MASS_BINS[1:], strict=False)}
    keys = list(counts)
    for m in masses:
        counts[keys[min(len(keys) - 1, int(m * 10))]] += 1
    return counts
