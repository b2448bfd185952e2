"""EFT data (evaluation fine-tuning, Yuan et al. 2024 §2.1): the judge prompt answered with a short
justification and a final `Score: N` line. Trained into M1 together with IFT data, it is what makes a
small model a judge whose output `judge_text.parse_score` can read.

Every example is one chat turn, rendered with the loop's own judge template and code
(`judge_text.load_template` + `judge_text.render_judge_prompt`), so M1 learns exactly the prompt it will see:

    {"messages": [{"role": "user", "content": <judge prompt>}, {"role": "assistant", "content": "...\\nScore: N"}],
     "score": N, "source": "eft-seed" | "eft-built"}

Two sources:
- `default_examples`: our hand-written judgements of `seed_data.ranked` (prompts/seed/ranked.jsonl),
  each followed by its `Score: N`. The most common score is down-sampled (seeded) to the count of
  the second most common (1: 62 -> 50 with the shipped files, 218 examples).
- `build`: the paper's builder for a model that can already judge: sample K judgements per response
  of human-ranked items (`inputs.load_labels`), keep those whose scores order the responses as
  the humans did (`choose_agreeing`), down-sample the most common score, write them as above.

Reads  seed_data.instructions + seed_data.ranked (default examples); a human-label file (build)
Writes (build) the EFT JSONL file given by --out (default iterations/<run>/eft.jsonl)

Run alone: `selfreward eft build --labels FILE [--model M] [--out FILE] [--samples K]`; point
`sft.eft_data` at the file to train M1 on it instead of the default examples.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfreward.artifacts import DataError, RunPaths, iter_jsonl, project_file, write_jsonl
from selfreward.config import JudgeConfig, RunConfig, SeedConfig
from selfreward.generation import Generator, open_generator
from selfreward.inputs import LabelledItem, SeedInstruction, load_instructions, load_labels, typed_field
from selfreward.judge_text import MAX_SCORE, load_template, parse_score, render_judge_prompt
from selfreward.loop.judge import judge_texts
from selfreward.models import resolve_model
from selfreward.records import JudgeSample

log = logging.getLogger(__name__)

SEED_SOURCE, BUILT_SOURCE = "eft-seed", "eft-built"


# --------------------------------------------------------------------------- seed files


@dataclass
class RankedResponse:
    text: str
    rank: int
    """1 = best; strictly increasing within an item."""
    judgement: str
    """Our justification against the rubric, without a `Score:` line."""
    score: int
    """0-5, strictly decreasing with rank."""


@dataclass
class RankedItem:
    """One line of `seed_data.ranked`: responses to one seed instruction, best first."""

    id: str
    responses: list[RankedResponse]


def load_ranked(path: str | Path, instructions: dict[str, SeedInstruction]) -> list[RankedItem]:
    """The ranked seed items, checked: known ids, ranks 1, 2, ..., integer scores 0-5 strictly decreasing
    with rank, judgements without a `Score:` line. Errors name file:line and the field."""
    path = project_file(path)
    items = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        item_id = typed_field(row, "id", str, where)
        if item_id not in instructions:
            raise DataError(f"{where}: unknown id '{item_id}' (not in the instructions file)")
        raw = typed_field(row, "responses", list, where)
        if not raw:
            raise DataError(f"{where}: field 'responses' is empty")
        responses = []
        for j, r in enumerate(raw):
            at = f"{where}: responses[{j}]"
            if not isinstance(r, dict):
                raise DataError(f"{at}: expected an object")
            resp = RankedResponse(
                typed_field(r, "text", str, at),
                typed_field(r, "rank", int, at),
                typed_field(r, "judgement", str, at),
                0,
            )
            resp.score = typed_field(r, "score", int, at)
            if resp.rank != j + 1:
                raise DataError(f"{at}: field 'rank' is {resp.rank}, expected {j + 1} (best first, no ties)")
            if not 0 <= resp.score <= MAX_SCORE:
                raise DataError(f"{at}: field 'score' is {resp.score}, expected 0-{MAX_SCORE}")
            if responses and resp.score >= responses[-1].score:
                raise DataError(f"{at}: field 'score' must be lower than the score of rank {j}")
            if parse_score(resp.judgement)[1] != "no_score_line":
                raise DataError(f"{at}: field 'judgement' contains a Score line (it is appended)")
            responses.append(resp)
        items.append(RankedItem(item_id, responses))
    return items


# --------------------------------------------------------------------------- examples


def assistant_text(justification: str, score: int) -> str:
    """What the judge should answer: the justification, then `Score: N` on the last line."""
    return f"{justification.strip()}\nScore: {score}"


def eft_example(template: str, instruction: str, response: str, answer: str, score: int, source: str) -> dict:
    """One chat-format EFT example: the rendered judge prompt and the judge's answer."""
    return {
        "messages": [
            {"role": "user", "content": render_judge_prompt(template, instruction, response)},
            {"role": "assistant", "content": answer},
        ],
        "score": score,
        "source": source,
    }


def downsample_most_common(scores: list[int], seed: int = 0) -> list[int]:
    """Indices to keep: every index, except that the most common score keeps only as many (chosen with
    `random.Random(seed)`) as the second most common score has. Order is preserved. With one distinct
    score nothing is dropped; of equally common scores the smaller one counts as the most common."""
    counts = Counter(scores)
    if len(counts) < 2:
        return list(range(len(scores)))
    (top, _), (_, second) = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    top_indices = [i for i, s in enumerate(scores) if s == top]
    keep_top = set(random.Random(seed).sample(top_indices, second))
    return [i for i, s in enumerate(scores) if s != top or i in keep_top]


def default_examples(seed_cfg: SeedConfig, judge_cfg: JudgeConfig, seed: int = 0) -> list[dict]:
    """EFT examples from our hand-judged seed responses, the most common score down-sampled."""
    instructions = load_instructions(seed_cfg.instructions)
    items = load_ranked(seed_cfg.ranked, instructions)
    template = load_template(judge_cfg.template)
    examples = [
        eft_example(
            template,
            instructions[item.id].instruction,
            r.text,
            assistant_text(r.judgement, r.score),
            r.score,
            SEED_SOURCE,
        )
        for item in items
        for r in item.responses
    ]
    keep = downsample_most_common([e["score"] for e in examples], seed)
    return [examples[i] for i in keep]


# --------------------------------------------------------------------------- the builder (pure part)


def choose_agreeing(scores: list[list[int | None]], human_ranks: list[int]) -> list[int] | None:
    """Pick one judge sample per response so that the picked scores order the responses exactly as the
    humans did, or None if no such pick exists.

    `scores[j][s]` is the parsed score of sample s of response j (None: did not parse, never picked);
    `human_ranks[j]` its human rank (1 best; equal ranks are a tie). The rule: group the responses by
    human rank, best group first. The picked scores must be equal within a group (a human tie is
    matched only by a judge tie) and strictly lower in each later group. Going from the best group
    down, take the highest score that every response of the group has among its samples and that is
    below the previous group's score; for each response the first sample with that score is picked.
    Taking the highest possible score leaves the most room below, so this finds a pick whenever one
    exists. Returns the picked sample index of each response.
    """
    picks: list[int] = [-1] * len(scores)
    ceiling = MAX_SCORE + 1
    for rank in sorted(set(human_ranks)):
        group = [j for j, r in enumerate(human_ranks) if r == rank]
        common = set.intersection(*({s for s in scores[j] if s is not None} for j in group))
        allowed = [s for s in common if s < ceiling]
        if not allowed:
            return None
        ceiling = max(allowed)
        for j in group:
            picks[j] = scores[j].index(ceiling)
    return picks


@dataclass
class Selected:
    """A judge sample kept as EFT data."""

    item: int
    response: int
    text: str
    score: int


def select_agreeing(
    items: list[LabelledItem], samples: list[list[list[JudgeSample]]], seed: int = 0
) -> tuple[list[Selected], dict[str, int]]:
    """The kept judgements of `items` (samples[i][j] = the K samples of response j of item i) and counts.

    Counted per response (one candidate example each): an item where some response has no parsed
    sample drops all its responses as `dropped_parse_failure`; an item with no pick that agrees with
    the humans (`choose_agreeing`) drops them as `dropped_disagree`; of the rest, the most common score
    is down-sampled (`downsample_most_common`, `dropped_downsampled`). kept + the three = responses.
    """
    counts = {
        "items": len(items),
        "responses": 0,
        "samples": 0,
        "samples_unparsed": 0,
        "items_kept": 0,
        "dropped_parse_failure": 0,
        "dropped_disagree": 0,
        "dropped_downsampled": 0,
        "kept": 0,
    }
    agreeing: list[Selected] = []
    for i, (item, item_samples) in enumerate(zip(items, samples, strict=True)):
        if len(item_samples) != len(item.responses):
            raise ValueError(f"item {i}: {len(item_samples)} sample lists for {len(item.responses)} responses")
        scores = [[_integer_score(s) for s in resp] for resp in item_samples]
        counts["responses"] += len(scores)
        counts["samples"] += sum(len(s) for s in scores)
        counts["samples_unparsed"] += sum(x is None for s in scores for x in s)
        if any(all(x is None for x in s) for s in scores):
            counts["dropped_parse_failure"] += len(scores)
            continue
        picks = choose_agreeing(scores, item.human_ranks)
        if picks is None:
            counts["dropped_disagree"] += len(scores)
            continue
        counts["items_kept"] += 1
        agreeing += [Selected(i, j, item_samples[j][p].text, scores[j][p]) for j, p in enumerate(picks)]
    keep = downsample_most_common([s.score for s in agreeing], seed)
    counts["dropped_downsampled"] = len(agreeing) - len(keep)
    counts["kept"] = len(keep)
    return [agreeing[k] for k in keep], counts


def _integer_score(sample: JudgeSample) -> int | None:
    """A sampled-mode score (an integer 0-5) or None."""
    if sample.score is None or sample.score != int(sample.score):
        return None
    return int(sample.score)


# --------------------------------------------------------------------------- the builder


def build(
    gen: Generator,
    judge_cfg: JudgeConfig,
    labels_path: str,
    out: Path,
    samples: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Judge every response of the human-ranked items K times (sampled mode: a parsed `Score: N` per
    sample), keep the judgements that agree with the humans, write them to `out`; returns the counts."""
    items = load_labels(labels_path)
    cfg = dataclasses.replace(judge_cfg, mode="sampled", samples=samples or judge_cfg.samples)
    pairs = [(item.prompt, r) for item in items for r in item.responses]
    judgements = judge_texts(gen, cfg, pairs, seed=seed)
    per_item, pos = [], 0
    for item in items:
        per_item.append([j.samples for j in judgements[pos : pos + len(item.responses)]])
        pos += len(item.responses)
    selected, counts = select_agreeing(items, per_item, seed)
    template = load_template(cfg.template)
    rows = [
        eft_example(
            template,
            items[s.item].prompt,
            items[s.item].responses[s.response],
            s.text.strip(),
            s.score,
            BUILT_SOURCE,
        )
        for s in selected
    ]
    write_jsonl(out, rows)
    counts["score_histogram"] = [sum(s.score == d for s in selected) for d in range(MAX_SCORE + 1)]
    counts["judge_samples_per_response"] = cfg.samples
    counts["out"] = str(out)
    log.info("EFT build: kept %d of %d responses -> %s", counts["kept"], counts["responses"], out)
    return counts


def build_from_config(
    cfg: RunConfig, labels: str, model: str | None = None, out: str | None = None, samples: int | None = None
) -> dict[str, Any]:
    """`selfreward eft build`: open the engine on `model` (default: the config's model), run `build`."""
    path = Path(out) if out else RunPaths(cfg.run_dir).eft_data
    model_path = resolve_model(model or cfg.model, cfg.cache_dir)
    with open_generator(cfg.engine, model_path, Path(cfg.cache_dir), seed=cfg.seed) as gen:
        counts = build(gen, cfg.judge, labels, path, samples, cfg.seed)
    return {"model": model_path, **counts}
