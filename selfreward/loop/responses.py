"""Stage 2: N candidate responses per prompt, sampled from the current model.

Reads  iter_K/prompts.jsonl
Writes iter_K/candidates.jsonl (`candidate_id` = `{prompt_id}-c{j}`); with `pairs.rejected_from: initial` (from
       iteration 2) also iter_K/anchors.jsonl, the run's first model's answers (`{prompt_id}-a{j}`), its own stage
"""

from __future__ import annotations

from selfreward.artifacts import IterPaths, read_jsonl, write_jsonl
from selfreward.config import ResponsesConfig
from selfreward.generation import Generator, SamplingSpec, engine_settings
from selfreward.records import Candidate, Prompt, required_fields, to_row
from selfreward.runs import Stage

STAGE = Stage(
    "candidates",
    config=lambda cfg: (cfg.responses, engine_settings(cfg.engine)),
    reads=("prompts",),
    writes=("candidates",),
)
"""Its fingerprint: responses and engine settings, the prompts; the answering model is passed by the pipeline."""


ANCHOR_STAGE = Stage(
    "anchors",
    config=lambda cfg: (cfg.responses, engine_settings(cfg.engine)),
    reads=("prompts",),
    writes=("anchors",),
)
"""`pairs.rejected_from: initial`: the run's first model answers the prompts too (anchors.jsonl); the model is
passed by the pipeline."""


def answer(gen: Generator, cfg: ResponsesConfig, prompts: list[dict], seed: int, tag: str = "c") -> list[Candidate]:
    """`cfg.n` sampled answers per prompt, ids `{prompt_id}-{tag}{j}`."""
    spec = SamplingSpec(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed)
    outputs = gen.chat([[{"role": "user", "content": p["text"]}] for p in prompts], spec)
    return [
        Candidate(f"{p['prompt_id']}-{tag}{j}", p["prompt_id"], o.text, o.num_tokens, o.finish_reason)
        for p, outs in zip(prompts, outputs, strict=True)
        for j, o in enumerate(outs)
    ]


def run(gen: Generator, cfg: ResponsesConfig, it: IterPaths, seed: int = 0) -> dict:
    """The stage: candidates.jsonl from the current model."""
    candidates = answer(gen, cfg, read_jsonl(it.prompts, required_fields(Prompt)), seed)
    write_jsonl(it.candidates, (to_row(c) for c in candidates))
    return answer_metrics(candidates)


def run_anchors(gen: Generator, cfg: ResponsesConfig, it: IterPaths, seed: int = 0) -> dict:
    """Anchored rejection: anchors.jsonl, the initial model's answers (ids `{prompt_id}-a{j}`)."""
    anchors = answer(gen, cfg, read_jsonl(it.prompts, required_fields(Prompt)), seed, tag="a")
    write_jsonl(it.anchors, (to_row(c) for c in anchors))
    return answer_metrics(anchors)


def answer_metrics(candidates: list[Candidate]) -> dict:
    n = len(candidates)
    return {
        "candidates": n,
        "candidates_truncated": sum(c.finish_reason == "length" for c in candidates),
        "candidates_empty": sum(not c.text.strip() for c in candidates),
        "mean_candidate_tokens": sum(c.num_tokens for c in candidates) / n if n else None,
        "mean_candidate_chars": sum(len(c.text) for c in candidates) / n if n else None,
    }
