"""The real SmolLM2-135M-Instruct through the loop's own stages (marked slow: `make test SLOW=1`).

Its judgements are noise as shipped (it rarely writes a parseable score), so these tests check
that the outputs are complete and well-formed, not any particular quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfreward.config import EngineConfig, JudgeConfig, PromptGenConfig, RunConfig
from selfreward.generation import HFGenerator
from selfreward.inputs import load_seed_pool
from selfreward.loop.judge import judge_texts, judgement_metrics
from selfreward.loop.prompt_gen import generate_prompts

from .conftest import SHARED_DATA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gen(embedded_model: Path):
    g = HFGenerator(str(embedded_model), EngineConfig(backend="transformers"))
    yield g
    g.close()


def human_pairs(n: int) -> list[tuple[str, str]]:
    path = SHARED_DATA / "human_pairs" / "pandalm_testset_v1_majority.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return [(r["prompt"], r["response_a"]) for r in rows] + [(r["prompt"], r["response_b"]) for r in rows]


def test_probability_judge_scores_every_response(gen) -> None:
    items = human_pairs(3)
    judgements = judge_texts(gen, JudgeConfig(mode="probabilities", samples=2, max_tokens=32), items)
    assert len(judgements) == len(items)
    for j in judgements:
        assert j.num_parsed == 2 and 0.0 <= j.score <= 5.0
        assert all(abs(sum(s.probs) - 1) < 1e-4 for s in j.samples)
    assert judgement_metrics(judgements)["parse_failure_rate"] == 0.0


def test_sampled_judge_records_every_sample(gen) -> None:
    items = human_pairs(2)
    judgements = judge_texts(gen, JudgeConfig(mode="sampled", samples=2, max_tokens=48), items)
    m = judgement_metrics(judgements)
    assert m["judge_samples"] == 2 * len(items)
    for j in judgements:
        for s in j.samples:
            assert (s.score is None) == (s.error is not None)
            assert s.score is None or s.score in range(6)
    assert 0.0 <= m["parse_failure_rate"] <= 1.0


def test_prompt_generation_writes_novel_prompts(gen) -> None:
    pool = load_seed_pool(RunConfig().seed_data.instructions)
    cfg = PromptGenConfig(num_prompts=4, max_tokens=48, max_rounds=3)
    kept, rejected = generate_prompts(gen, cfg, pool, iteration=1)
    assert len(kept) + len(rejected) >= 4
    normalised_pool = {p.lower() for p in pool}
    for p in kept:
        assert cfg.min_chars <= len(p.text) <= cfg.max_chars and "\n" not in p.text
        assert p.text.lower() not in normalised_pool
