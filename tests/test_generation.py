"""Both engines on the tiny model with the same sampling parameters give the same kind of records."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from selfreward.config import EngineConfig, resolve_dtype
from selfreward.generation import HFGenerator, SamplingSpec, VLLMGenerator, request_seed, vllm_dtype

from .conftest import CACHE, ROOT, requires_vllm

CHATS = [
    [{"role": "user", "content": "Say something about the sea."}],
    [{"role": "user", "content": "A much longer request, so that the prompts in a batch have different lengths."}],
    [{"role": "user", "content": "Third."}],
]


def check_records(gen, n: int = 3, max_tokens: int = 12) -> None:
    out = gen.chat(CHATS, SamplingSpec(n=n, temperature=0.9, top_p=0.95, max_tokens=max_tokens, seed=1))
    assert len(out) == len(CHATS)
    for group in out:
        assert len(group) == n
        for c in group:
            assert isinstance(c.text, str)
            assert 1 <= c.num_tokens <= max_tokens
            assert c.finish_reason in {"stop", "length"}
            assert c.finish_reason == "stop" or c.num_tokens == max_tokens
    assert gen.generated_tokens == sum(c.num_tokens for g in out for c in g)


def check_stop(gen) -> None:
    # with a stop string made of characters the model emits often, the text must never contain it
    out = gen.chat(CHATS, SamplingSpec(n=4, temperature=1.0, top_p=1.0, max_tokens=24, stop=["e"], seed=2))
    assert all("e" not in c.text for g in out for c in g)


def digit_ids(gen) -> list[int]:
    return [gen.encode(str(d))[0] for d in range(6)]


@pytest.fixture(scope="module")
def hf(tiny_model: Path):
    gen = HFGenerator(str(tiny_model), EngineConfig(backend="transformers", dtype="float32", batch_size=2))
    yield gen
    gen.close()


def test_transformers_engine_records(hf) -> None:
    check_records(hf)
    check_stop(hf)


def test_transformers_engine_is_seeded(hf) -> None:
    spec = SamplingSpec(n=2, temperature=1.0, max_tokens=8, seed=5)
    assert hf.chat(CHATS, spec) == hf.chat(CHATS, spec)


def test_transformers_batching_does_not_change_greedy_output(tiny_model: Path, hf) -> None:
    one = HFGenerator(str(tiny_model), EngineConfig(backend="transformers", dtype="float32", batch_size=1))
    spec = SamplingSpec(n=1, temperature=0.0, max_tokens=8)
    assert [g[0].text for g in one.chat(CHATS, spec)] == [g[0].text for g in hf.chat(CHATS, spec)]


def test_token_probs_are_probabilities_over_the_whole_vocabulary(hf) -> None:
    """Not renormalised over the six digits: a random tiny model puts ~6/49152 of its mass on them."""
    import torch

    prompts = [hf.render_chat(c, prefill="Score: ") for c in CHATS]
    ids = digit_ids(hf)
    probs = hf.token_probs(prompts, ids)
    assert len(probs) == 3
    for prompt, p in zip(prompts, probs, strict=True):
        assert len(p) == 6 and 0 < sum(p) < 0.01 and min(p) >= 0
        with torch.inference_mode():
            logits = hf.model(torch.tensor([hf.encode(prompt)])).logits[0, -1].float()
        assert p == pytest.approx(torch.softmax(logits, -1)[ids].tolist(), rel=1e-4)


@requires_vllm
def test_vllm_engine_matches_transformers(tiny_model: Path, hf) -> None:
    gen = VLLMGenerator(
        str(tiny_model), EngineConfig(backend="vllm", dtype="float32", kv_cache_gib=1, max_model_len=512), CACHE
    )
    try:
        check_records(gen)
        check_stop(gen)
        prompts = [hf.render_chat(c, prefill="Score: ") for c in CHATS]
        ids = digit_ids(hf)
        # same model, same prompts: the two engines agree on each digit's probability over the whole
        # vocabulary (so on the digit mass too), not only on the renormalised distribution
        for a, b in zip(gen.token_probs(prompts, ids), hf.token_probs(prompts, ids), strict=True):
            assert a == pytest.approx(b, rel=2e-2)
            assert sum(a) == pytest.approx(sum(b), rel=2e-2)
        # per-request seeds: a prompt's samples do not depend on the other prompts of the call, their order,
        # or what the engine ran before (the prefix cache now holds these prompts)
        spec = SamplingSpec(n=3, temperature=1.0, max_tokens=10, seed=7)
        chats = [[{"role": "user", "content": f"Say something about {t}."}] for t in ("rain", "salt", "maps", "ice")]
        whole = gen.chat(chats, spec)
        alone = gen.chat([chats[0]], spec)
        other_neighbour = gen.chat([chats[0], [{"role": "user", "content": "Count to five."}]], spec)
        assert [c.text for c in alone[0]] == [c.text for c in whole[0]] == [c.text for c in other_neighbour[0]]
        assert [c.text for c in gen.chat(chats, dataclasses.replace(spec, seed=8))[0]] != [c.text for c in whole[0]]
        assert len({c.text for c in whole[0]}) > 1  # the n samples of one request are not one stream
        # the engine's own prefix-cache counters: a prompt sent again is found in the cache, in whole blocks
        # (128 tokens on a CPU, so these ~300-token prompts have two), shorter prompts never
        long_chat = [[{"role": "user", "content": "The sea is wide and deep, and the wind is cold. " * 25}]]
        gen.chat(long_chat, spec)
        before = gen.prefix_cache()
        assert before is not None and before["queried_tokens"] > 0
        gen.chat(long_chat, dataclasses.replace(spec, seed=9))
        after = gen.prefix_cache()
        assert after["queried_tokens"] > before["queried_tokens"] and after["hit_tokens"] - before["hit_tokens"] >= 256
    finally:
        gen.close()


def test_vllm_dtype_on_cpu_is_float32_only_for_a_reproducible_engine_in_another_process() -> None:
    # an in-process engine runs the same batches every time: bf16 where the CPU has it; a server's (or an engine
    # beside a distributed job's) batches follow request timing, so a reproducible one on a CPU runs fp32 (the
    # only batch-invariant dtype there)
    assert vllm_dtype(EngineConfig(dtype="auto"), on_gpu=False, in_process=True) == resolve_dtype("auto")
    assert vllm_dtype(EngineConfig(dtype="auto"), on_gpu=False, in_process=False) == "float32"
    assert vllm_dtype(EngineConfig(dtype="bfloat16"), on_gpu=False, in_process=False) == "bfloat16"
    free = EngineConfig(dtype="auto", reproducible=False)
    assert vllm_dtype(free, on_gpu=False, in_process=False) == resolve_dtype("auto")
    assert vllm_dtype(EngineConfig(dtype="auto"), on_gpu=True, in_process=False) == resolve_dtype("auto")


def judge_chats(count: int) -> list[list[dict[str, str]]]:
    """Judge-stage requests (the rubric around our seed instructions and their answers): ~400 tokens each."""
    template = (ROOT / "prompts" / "judge.txt").read_text()
    rows = [json.loads(line) for line in (ROOT / "prompts" / "seed" / "instructions.jsonl").open()][:count]
    texts = [template.replace("{instruction}", r["instruction"]).replace("{response}", r["response"]) for r in rows]
    return [[{"role": "user", "content": t}] for t in texts]


@requires_vllm
@pytest.mark.parametrize("which", ["tiny", pytest.param("embedded", marks=pytest.mark.slow)])
def test_vllm_call_redone_in_a_fresh_engine_samples_the_same_text(which: str, request: pytest.FixtureRequest) -> None:
    """What a resumed stage relies on, in the loop's dtype (bf16 on a CPU that has it): engine A has served
    another call (with these very prompts, so its prefix cache holds their blocks) before its prefix cache is
    emptied; a fresh engine B samples what A then samples and finds in its cache what A found. Closing an
    in-process engine gives back its memory and removes the environment variables vLLM set in this process.
    On the real model the text is the sensitive part (engines in their own processes, whose batches follow
    request timing, sampled the same text for 2 of 60 such prompts in bf16); the tiny random model's
    near-uniform logits rarely change a draw, so there the cache counters are."""
    import os

    import psutil

    model = request.getfixturevalue("tiny_model" if which == "tiny" else "embedded_model")
    cfg = EngineConfig(backend="vllm", kv_cache_gib=1, max_model_len=1024)
    chats = judge_chats(24)
    spec = SamplingSpec(n=3, temperature=0.7, top_p=0.9, max_tokens=32, seed=11)
    environ = dict(os.environ)
    a = VLLMGenerator(str(model), cfg, CACHE)
    try:
        assert a.dtype == resolve_dtype("auto")
        a.chat(chats[::-1] + [[{"role": "user", "content": "Count to five."}]], dataclasses.replace(spec, seed=3))
        a.reset_prefix_cache()
        before = a.prefix_cache()["hit_tokens"]
        first = [[c.text for c in g] for g in a.chat(chats, spec)]
        hits_a = a.prefix_cache()["hit_tokens"] - before
    finally:
        a.close()
    left = {k for k in os.environ if os.environ[k] != environ.get(k)}  # ours (configure_vllm_cpu_env) stay
    assert not left & {"LOCAL_WORLD_SIZE", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_DIST_IDENT"}, left
    after_close = psutil.Process().memory_full_info().pss
    b = VLLMGenerator(str(model), cfg, CACHE)
    try:
        assert psutil.Process().memory_full_info().pss - after_close > 0.5 * 2**30  # B's 1 GiB KV cache, here
        second = [[c.text for c in g] for g in b.chat(chats, spec)]
        assert b.prefix_cache()["hit_tokens"] == hits_a  # A found in its cache only what the call put there
    finally:
        b.close()
    assert psutil.Process().memory_full_info().pss - after_close < 0.3 * 2**30
    assert sum(x == y for x, y in zip(first, second, strict=True)) == len(chats)


@requires_vllm
def test_vllm_beside_a_distributed_job_runs_in_its_own_process(tiny_model: Path) -> None:
    """On the main rank of a distributed job (PPO's judge) an in-process vLLM worker would join the job's process
    group and destroy it on close: there the engine runs in its own process, in fp32 when reproducible."""
    import socket

    import torch
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        gen = VLLMGenerator(str(tiny_model), EngineConfig(backend="vllm", kv_cache_gib=1, max_model_len=512), CACHE)
        try:
            assert not gen.in_process and gen.dtype == "float32"
            check_records(gen)
        finally:
            gen.close()
        assert dist.is_initialized()
        total = torch.ones(1)
        dist.all_reduce(total)  # the job's group still works
        assert total.item() == 1.0
    finally:
        dist.destroy_process_group()


def test_request_seeds_keep_the_samples_of_neighbouring_prompts_apart() -> None:
    # vLLM seeds sample j of a request `seed + j`: no two (prompt, sample) pairs may share a stream
    streams = {request_seed(0, i) + j for i in range(500) for j in range(8)}
    assert len(streams) == 500 * 8
    assert request_seed(0, 3) == request_seed(0, 3) != request_seed(1, 3)
