"""Stage 2: N candidate responses per prompt, sampled from the current model.

Reads  iter_K/prompts.jsonl
Writes iter_K/candidates.jsonl (`candidate_id` = `{prompt_id}-c{j}`)
"""

from __future__ import annotations

from selfreward.artifacts import IterPaths, read_jsonl, write_jsonl
from selfreward.config import ResponsesConfig
from selfreward.generation import Generator, SamplingSpec, engine_settings
from selfreward.records import Candidate, Prompt, required_fields, to_row
from selfreward.runs import Stage

STAGE = Stage("candidates", config=lambda cfg: (cfg.responses, engine_settings(cfg.engine)), reads=("prompts",))
"""Its fingerprint: responses and engine settings, the prompts; the answering model is passed by the pipeline."""


def run(gen: Generator, cfg: ResponsesConfig, it: IterPaths, seed: int = 0) -> dict:
    prompts = read_jsonl(it.prompts, required_fields(Prompt))
    spec = SamplingSpec(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed)
    outputs = gen.chat([[{"role": "user", "content": p["text"]}] for p in prompts], spec)
    candidates = [
        Candidate(f"{p['prompt_id']}-c{j}", p["prompt_id"], o.text, o.num_tokens, o.finish_reason)
        for p, outs in zip(prompts, outputs, strict=True)
        for j, o in enumerate(outs)
    ]
    write_jsonl(it.candidates, (to_row(c) for c in candidates))
    n = len(candidates)
    return {
        "candidates": n,
        "candidates_truncated": sum(c.finish_reason == "length" for c in candidates),
        "candidates_empty": sum(not c.text.strip() for c in candidates),
        "mean_candidate_tokens": sum(c.num_tokens for c in candidates) / n if n else None,
        "mean_candidate_chars": sum(len(c.text) for c in candidates) / n if n else None,
    }
