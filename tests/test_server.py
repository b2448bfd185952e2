"""`engine.backend: server` against a real `vllm serve` of the tiny model that the test starts and stops:
the same records, the same seeded samples and the same digit probabilities as the in-process vLLM engine."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from selfreward.config import EngineConfig
from selfreward.generation import SamplingSpec, ServerGenerator, VLLMGenerator
from selfreward.server import ServerError, serve_args

from .conftest import CACHE, requires_vllm
from .test_generation import CHATS, check_records, check_stop, digit_ids

SETTINGS = dict(dtype="float32", kv_cache_gib=1, max_model_len=512)
SPEC = SamplingSpec(n=3, temperature=1.0, max_tokens=10, seed=11)


def test_a_launched_server_gets_the_in_process_engines_settings() -> None:
    cfg = EngineConfig(backend="server", launch_server=True, server_args=["--max-num-seqs", "8"], **SETTINGS)
    args = serve_args("/m", cfg, "float32", 3, 8123, on_gpu=False)

    def value(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert value("--model") == "/m" and value("--port") == "8123" and value("--seed") == "3"
    assert value("--max-model-len") == "512" and value("--logprobs-mode") == "raw_logprobs"
    assert value("--dtype") == "float32" and value("--max-logprobs") == "20"
    assert value("--generation-config") == "vllm"  # no sampling defaults from the model's generation_config
    assert "--no-enable-chunked-prefill" in args and "--enable-prefix-caching" in args
    assert args[-2:] == ["--max-num-seqs", "8"]


@pytest.mark.slow
@requires_vllm
def test_vllm_serve_matches_the_in_process_engine(tiny_model: Path, embedded_model: Path) -> None:
    inproc = VLLMGenerator(str(tiny_model), EngineConfig(backend="vllm", **SETTINGS), CACHE)
    try:
        prompts = [inproc.render_chat(c, prefill="Score: ") for c in CHATS]
        ids = digit_ids(inproc)
        want_probs = inproc.token_probs(prompts, ids)
        want_texts = [[c.text for c in g] for g in inproc.chat(CHATS, SPEC)]
    finally:
        inproc.close()

    gen = ServerGenerator(str(tiny_model), EngineConfig(backend="server", launch_server=True, **SETTINGS), CACHE)
    try:
        server = gen.server
        assert server is not None
        check_records(gen)
        check_stop(gen)
        got_probs = gen.token_probs(prompts, ids)
        diff = max(
            abs(a - b) / b for pa, pb in zip(got_probs, want_probs, strict=True) for a, b in zip(pa, pb, strict=True)
        )
        print(json.dumps({"server_vs_in_process_digit_prob_max_rel_diff": diff}))
        assert diff < 1e-4
        assert [[c.text for c in g] for g in gen.chat(CHATS, SPEC)] == want_texts  # the same seeded samples

        # a second client of the same server, for a model the server does not serve: one clear error
        other = EngineConfig(backend="server", base_url=server.base_url, **SETTINGS)
        with pytest.raises(ServerError, match=f"not this stage's model {embedded_model}"):
            ServerGenerator(str(embedded_model), other, CACHE)
        # ...and one told the served name
        named = EngineConfig(backend="server", base_url=server.base_url, server_model=str(tiny_model), **SETTINGS)
        client = ServerGenerator(str(tiny_model), named, CACHE)
        assert client.token_probs(prompts[:1], ids) == got_probs[:1]
        client.close()
        assert server.process.poll() is None  # a client does not stop a server it did not start
    finally:
        gen.close()
    assert server.process.poll() is not None  # stopped with the generator that started it
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.base_url + "/models", timeout=2)


@pytest.mark.slow
@requires_vllm
def test_the_loop_on_a_launched_server_stops_it_on_sigterm_and_resumes(tmp_path: Path, tiny_model: Path) -> None:
    """One tiny iteration with `engine.backend=server`: SIGTERM while the server generates takes the server and
    its engine processes down with the loop; the re-run finishes the iteration with the same files as any."""
    import subprocess
    import sys
    import time

    import psutil

    from selfreward.artifacts import RunPaths

    from .conftest import ROOT

    cmd = [sys.executable, "-m", "selfreward", "iterate", "--config", "configs/tiny.yaml", "--iterations", "1"]
    cmd += [f"model={tiny_model}", f"output_dir={tmp_path}", "run_name=served", "engine.backend=server"]
    cmd += ["engine.launch_server=true", "engine.kv_cache_gib=1"]
    run = RunPaths(tmp_path / "served")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    loop = psutil.Process(proc.pid)
    server: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 600
        while not server and time.monotonic() < deadline and proc.poll() is None:
            # the iteration's server is up once the seed SFT is done and prompt generation has begun
            if run.iteration(0).marker("sft").exists():
                server = [p for p in loop.children(recursive=True) if "api_server" in " ".join(p.cmdline())]
            time.sleep(0.5)
        assert server, "the loop never started a server"
        tree = server + server[0].children(recursive=True)
        time.sleep(5)
        proc.terminate()
        assert proc.wait(timeout=120) == 143
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, [p.cmdline()[:3] for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    it = run.iteration(1)
    assert it.pairs.exists() and it.model.exists()
    metrics = json.loads(it.metrics.read_text())
    assert metrics["stages"]["candidates"]["candidates"] > 0
