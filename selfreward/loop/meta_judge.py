"""Stage 3b (`meta_judge.enabled`): the model judges its own judgements (Meta-Rewarding, Wu et al. 2024).

Reads  iter_K/prompts.jsonl, candidates.jsonl, judgements.jsonl
Writes iter_K/meta_judgements.jsonl: per candidate considered, the two judgements compared (the highest- and the
       lowest-scored of its parsed judge samples), the meta-judge's preference in both orders and the verdict, or
       why it gave none (`dropped`: unparsed, same_score, too_long, inconsistent)

The meta-judge prompt (`meta_judge.template`, ours) shows the request, the answer and the two judgements; the
verdict is the probability of ` A` vs ` B` after `Better judgement:` (one forward pass), asked in both orders. A
judgement preferred in both orders is `preferred`; one that wins only in one order is `inconsistent` (position
bias, not a preference) and gives nothing. The pairs stage turns preferred judgements into judge-role DPO pairs
(`pairs.judge_pairs`), so that DPO trains the judge as well as the answers.

Only candidates whose parsed judgements disagree on the score can give a pair (two judgements with the same score
teach nothing about scoring). Up to `meta_judge.max_candidates` of them, a seeded sample, are compared.
"""

from __future__ import annotations

import random

from selfreward.artifacts import IterPaths, read_jsonl, write_jsonl
from selfreward.config import MetaJudgeConfig
from selfreward.generation import Generator, engine_settings
from selfreward.judge_text import META_PREFILL, load_meta_template, render_meta_prompt
from selfreward.loop.judge import choice_token_ids
from selfreward.records import Candidate, Judgement, MetaJudgement, Prompt, required_fields, to_row
from selfreward.runs import Stage

STAGE = Stage(
    "meta_judgements",
    config=lambda cfg: (cfg.meta_judge, engine_settings(cfg.engine)),
    files=lambda cfg: [cfg.meta_judge.template],
    reads=("prompts", "candidates", "judgements"),
    writes=("meta_judgements",),
)
"""Its fingerprint: meta-judge and engine settings, its template, the three files; the model is passed by the
pipeline."""


def judgements_to_compare(judgement: dict) -> tuple[int, int] | str:
    """The indices of the two judge samples of one candidate to compare: the first highest- and the first
    lowest-scored parsed sample; or why there are none: `unparsed` (fewer than two parsed), `same_score`.

    Example: scores [3, None, 5, 3] -> (2, 0); [4, 4] -> same_score; [4, None] -> unparsed."""
    parsed = [(i, s["score"]) for i, s in enumerate(judgement.get("samples") or []) if s.get("score") is not None]
    if len(parsed) < 2:
        return "unparsed"
    high = max(parsed, key=lambda x: (x[1], -x[0]))
    low = min(parsed, key=lambda x: (x[1], x[0]))
    if high[1] == low[1]:
        return "same_score"
    return high[0], low[0]


def meta_verdict(p_a_first: float, p_a_second: float) -> str | None:
    """Which judgement the meta-judge prefers from P(A) with judgement a shown as A (`p_a_first`) and shown as B
    (`p_a_second`): `a` when it wins both orders (0.7, 0.2), `b` when b does (0.3, 0.8), None when the verdict
    follows the position (0.7, 0.6) or is exactly even."""
    if p_a_first > 0.5 and p_a_second < 0.5:
        return "a"
    if p_a_first < 0.5 and p_a_second > 0.5:
        return "b"
    return None


def _renormalised(raw: list[float]) -> float:
    total = raw[0] + raw[1]
    return raw[0] / total if total > 0 else 0.5


def run(gen: Generator, cfg: MetaJudgeConfig, it: IterPaths, seed: int = 0) -> dict:
    """Compare two judgements of up to `cfg.max_candidates` candidates in both orders; write
    meta_judgements.jsonl; return the stage's metrics (counts by outcome)."""
    prompts = {r["prompt_id"]: r for r in read_jsonl(it.prompts, required_fields(Prompt))}
    candidates = {c["candidate_id"]: c for c in read_jsonl(it.candidates, required_fields(Candidate))}
    judgements = [j for j in read_jsonl(it.judgements, required_fields(Judgement)) if j["candidate_id"] in candidates]
    template = load_meta_template(cfg.template)
    rows: list[MetaJudgement] = []
    comparable: list[tuple[dict, int, int]] = []
    for j in judgements:
        picked = judgements_to_compare(j)
        if isinstance(picked, str):
            rows.append(MetaJudgement(j["candidate_id"], j["prompt_id"], -1, -1, None, None, dropped=picked))
        else:
            comparable.append((j, *picked))
    random.Random(seed).shuffle(comparable)
    comparable = comparable[: cfg.max_candidates]
    requests = []
    for j, a, b in comparable:
        samples = j["samples"]
        instruction = prompts[j["prompt_id"]]["text"]
        answer = candidates[j["candidate_id"]]["text"]
        for first, second in ((a, b), (b, a)):
            text = render_meta_prompt(template, instruction, answer, samples[first]["text"], samples[second]["text"])
            requests.append(gen.render_chat([{"role": "user", "content": text}], META_PREFILL))
    fits = [gen.fits(r, 1) for r in requests]
    ids = choice_token_ids(gen, META_PREFILL, [" A", " B"]) if comparable else []
    probs = iter(gen.token_probs([r for r, ok in zip(requests, fits, strict=True) if ok], ids) if any(fits) else [])
    answers = [next(probs) if ok else None for ok in fits]
    for n, (j, a, b) in enumerate(comparable):
        samples = j["samples"]
        row = MetaJudgement(j["candidate_id"], j["prompt_id"], a, b, samples[a]["score"], samples[b]["score"])
        first, second = answers[2 * n], answers[2 * n + 1]
        if first is None or second is None:
            row.dropped = "too_long"
        else:
            row.p_a_first, row.p_a_second = _renormalised(first), _renormalised(second)
            verdict = meta_verdict(row.p_a_first, row.p_a_second)
            if verdict is None:
                row.dropped = "inconsistent"
            else:
                row.preferred = a if verdict == "a" else b
        rows.append(row)
    write_jsonl(it.meta_judgements, (to_row(r) for r in rows))
    outcomes: dict[str, int] = {}
    for r in rows:
        key = r.dropped or "preferred"
        outcomes[key] = outcomes.get(key, 0) + 1
    preferred = [r for r in rows if r.preferred is not None]
    return {
        "candidates_compared": len(comparable),
        "outcomes": outcomes,
        "preferred_higher_score": sum(1 for r in preferred if r.preferred == r.sample_a),
        "preferred_lower_score": sum(1 for r in preferred if r.preferred == r.sample_b),
    }
