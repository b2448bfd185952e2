"""Stage 3: the model judges its own candidates (LLM-as-a-Judge, additive 5-point rubric).

Reads  iter_K/prompts.jsonl, iter_K/candidates.jsonl
Writes iter_K/judgements.jsonl: per candidate, K judge samples (raw text, parsed score or the
       parse error) and their mean.

The judge prompt is `prompts/judge.txt` (our wording of the rubric of Yuan et al. 2024).
Two modes (config `judge.mode`):
- `sampled`: the paper's method: sample K judgements, parse the final `Score: N` line of each.
  A judgement that does not parse is kept with its raw text and excluded from the mean.
- `probabilities`: sample K justifications (stopped before `Score`), prefill `Score: ` and take
  the expected value of the next-token distribution over the digits 0-5.

The response cannot score itself: the score is parsed from the judge's output only, and before
the response is embedded in the judge prompt the template's tags and any `Score:` it contains
are neutralised, so it can neither close its section nor hand the judge a score line to copy.

`judge_texts()` is the one code path used by the loop and by judge evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import re

from selfreward.artifacts import IterPaths, project_file, read_jsonl, write_jsonl
from selfreward.config import JudgeConfig
from selfreward.generation import Generator, SamplingSpec
from selfreward.records import Candidate, Judgement, JudgeSample, Prompt, required_fields, to_row

log = logging.getLogger(__name__)

SCORE_PREFILL = "Score: "
PROBABILITY_CHUNK = 32
"""Probabilities mode: conversations whose justifications are sampled, then scored, together."""
MAX_SCORE = 5

# A score line: optional markdown around "Score", a colon, a number, optionally "/5" or "out of 5".
_SCORE_LINE = re.compile(
    r"^[ \t>*_#-]*score[ \t*_]*[:：][ \t*_]*(-?\d+(?:\.\d+)?)[ \t*_]*(?:/[ \t]*5|out of 5)?",
    re.IGNORECASE | re.MULTILINE,
)
_TAG = re.compile(r"<\s*(/?)\s*(request|response(?:[ _-]?[ab])?)\s*>", re.IGNORECASE)
_SCORE_WORD = re.compile(r"(score)(\s*)[:：]", re.IGNORECASE)


def parse_score(text: str) -> tuple[int | None, str | None]:
    """Parse the judge's output: the last `Score: N` line gives N (an integer 0-5).

    Returns (score, None) or (None, error) with error one of no_score_line, not_an_integer,
    out_of_range. Only the judge's own output may be passed here, never the prompt.
    """
    matches = _SCORE_LINE.findall(text)
    if not matches:
        return None, "no_score_line"
    value = float(matches[-1])
    if value != int(value):
        return None, "not_an_integer"
    if not 0 <= value <= MAX_SCORE:
        return None, "out_of_range"
    return int(value), None


def sanitize(text: str) -> str:
    """Neutralise what could let embedded text escape its section or supply a score line."""
    text = _TAG.sub(lambda m: f"[{m.group(1)}{m.group(2)}]", text)
    return _SCORE_WORD.sub(lambda m: f"{m.group(1)}{m.group(2)} -", text)


def load_template(path: str) -> str:
    template = project_file(path).read_text()
    for field in ("{instruction}", "{response}"):
        if field not in template:
            raise ValueError(f"{path}: the judge template must contain {field}")
    return template


def render_judge_prompt(template: str, instruction: str, response: str) -> str:
    # str.replace, not str.format: the texts may contain braces.
    return template.replace("{instruction}", sanitize(instruction)).replace("{response}", sanitize(response))


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
    template = load_template(cfg.template)
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
    judgements = []
    for samples in all_samples:
        scores = [s.score for s in samples if s.score is not None]
        mean = sum(scores) / len(scores) if scores else None
        judgements.append(Judgement("", "", mean, len(scores), samples))
    return judgements


def _judge_samples(
    gen: Generator, cfg: JudgeConfig, conversations: list[list[dict[str, str]]], spec: SamplingSpec
) -> list[list[JudgeSample]]:
    """K judge samples per conversation: parsed `Score:` lines, or digit probabilities after `Score: `."""
    if cfg.mode == "sampled":
        outputs = gen.chat(conversations, spec)
        return [[JudgeSample(o.text, *parse_score(o.text)) for o in outs] for outs in outputs]
    spec.stop = ["Score:", "score:", "SCORE:"]
    digits = digit_token_ids(gen)
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
            samples = []
            for o in outs:
                p = next(probs)
                score = sum(d * pd for d, pd in enumerate(p)) if sum(p) > 0 else None
                samples.append(JudgeSample(o.text, score, None if score is not None else "no_digit_probability", p))
            all_samples.append(samples)
    return all_samples


def run(gen: Generator, cfg: JudgeConfig, it: IterPaths, seed: int = 0) -> dict:
    """Judge every candidate of the iteration in one batch; returns the stage's metrics."""
    prompts = {r["prompt_id"]: r for r in read_jsonl(it.prompts, required_fields(Prompt))}
    candidates = read_jsonl(it.candidates, required_fields(Candidate))
    items = []
    for c in candidates:
        if c["prompt_id"] not in prompts:
            raise ValueError(f"{it.candidates}: candidate {c['candidate_id']} names unknown prompt {c['prompt_id']}")
        items.append((prompts[c["prompt_id"]]["text"], c["text"]))
    judgements = judge_texts(gen, cfg, items, seed=seed)
    for c, j in zip(candidates, judgements, strict=True):
        j.candidate_id, j.prompt_id = c["candidate_id"], c["prompt_id"]
    write_jsonl(it.judgements, (to_row(j) for j in judgements))
    return judgement_metrics(judgements)


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
    return {
        "candidates_judged": len(judgements),
        "judge_samples": len(samples),
        "parse_failures": len(failed),
        "parse_failure_rate": len(failed) / len(samples) if samples else 0.0,
        "parse_errors": errors,
        "unscored_candidates": sum(j.score is None for j in judgements),
        "score_histogram": histogram,
        "mean_score": _mean([j.score for j in judgements if j.score is not None]),
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
