"""The self-rewarding loop (Yuan et al. 2024, Fig. 1): M_t writes prompts, answers them, judges its
answers, and the best/worst answers train M_{t+1} with DPO.

`run_iteration` is the figure; `iterate` runs iterations 1..N of a run, first (config `seed_sft`, on by
default) `seed_sft`: iter_0 fine-tunes the configured model M0 on the seed IFT + EFT data into M1,
the paper's starting point, and iteration 1 starts from M1. Every stage writes its outputs, then a
marker; a re-run skips finished stages, redoes a stage whose marker is missing (and everything after
it), and refuses a finished stage whose config changed unless forced (`runs.StageRunner`).

Run: `selfreward iterate --config configs/default.yaml --iterations 3` (or `make iterate N=3`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from selfreward.artifacts import IterPaths, RunPaths, file_digest, model_digest, read_json, read_jsonl
from selfreward.cards import Lineage
from selfreward.config import ResponsesConfig, RunConfig
from selfreward.constraints.data import load_constraint_prompts
from selfreward.generation import Engine
from selfreward.inputs import load_prompt_file, load_seed_pool
from selfreward.launch import train
from selfreward.loop import dpo, judge, pairs, prompt_gen, responses, sft
from selfreward.models import base_model, iteration_seed, model_of_iteration, reference_for
from selfreward.runs import Progress, RunChain, StageRunner, file_digests, open_run, record_invocation
from selfreward.tracking import Tracker, log_iteration

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
    excluded = excluded_prompts(cfg)
    seed = iteration_seed(cfg, k)
    gen_settings = engine_settings(cfg)
    templates = file_digests([cfg.prompt_gen.template, cfg.seed_data.instructions])
    start = model_digest(model)

    with Engine(cfg, model) as engine:  # started on first use, serves stages 1-3
        # `config` (what the user chose) is refused when it changed; `inputs` (what earlier stages made) redo
        stages.run(
            "prompts",
            (cfg.prompt_gen, excluded, templates, gen_settings),
            lambda: prompt_gen.run(engine(), cfg.prompt_gen, pool, it, k, seed, excluded),
            inputs=lambda: (start, pool),
        )
        answer_and_judge(cfg, cfg.responses, it, seed, engine, stages, start)
        stages.metrics["engine"] = engine.close()  # the engine's memory is released before training
    lineage = Lineage(cfg.model, str(run.root), k, model)
    stages.run(
        "pairs",
        (cfg.pairs, cfg.dpo.max_length),
        lambda: pairs.run(cfg.pairs, it, tokenizer(model), cfg.dpo.max_length, cfg.judge, lineage),
        inputs=lambda: [file_digest(p) for p in (it.prompts, it.candidates, it.judgements)],
    )
    stages.run(
        "dpo",
        (cfg.dpo, reference),
        lambda: train(
            cfg,
            run,
            "selfreward.loop.dpo",
            ["--iter", str(k)],
            lambda: dpo.run(cfg.dpo, model, reference, it, seed, Tracker.of(cfg), lineage),
        ),
        inputs=lambda: (start, model_digest(reference) if reference else None, file_digest(it.pairs)),
    )


def answer_and_judge(
    cfg: RunConfig,
    responses_cfg: ResponsesConfig,
    it: IterPaths,
    seed: int,
    engine: Engine,
    stages: StageRunner,
    start: str,
) -> None:
    """Stages 2-3 on `it.prompts` (shared with expert iteration): candidates, then the model judges them.
    `start` is the answering model's digest (the stages' input beside the previous stage's file)."""
    gen_settings = engine_settings(cfg)
    stages.run(
        "candidates",
        (responses_cfg, gen_settings),
        lambda: responses.run(engine(), responses_cfg, it, seed),
        inputs=lambda: (start, file_digest(it.prompts)),
    )
    stages.run(
        "judgements",
        (cfg.judge, file_digests([cfg.judge.template]), gen_settings),
        lambda: judge.run(engine(), cfg.judge, it, seed),
        inputs=lambda: (start, file_digest(it.candidates)),
    )


def engine_settings(cfg: RunConfig) -> tuple:
    """The engine settings that change what a generation stage writes (the engine, the weights' dtype, and
    the context length, which decides which prompts are `too_long`)."""
    e = cfg.engine
    server = (e.base_url, e.server_model, e.server_args) if e.backend == "server" else ()
    return (e.backend, e.dtype, e.max_model_len, e.reproducible, *server)


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
    lineage = Lineage(cfg.model, str(run.root), 0, base)  # M0 as configured: the card's base model and licence
    stages.run(
        "sft",
        cfg.sft,
        lambda: train(
            cfg,
            run,
            "selfreward.loop.sft",
            [],
            lambda: sft.run(cfg.sft, base, it, cfg.seed, Tracker.of(cfg), lineage),
        ),
        inputs=lambda: (model_digest(base), file_digest(it.sft_data)),
    )


def seed_sft(cfg: RunConfig, run: RunPaths, chain: RunChain) -> None:
    """The start of every method of a run: iter_0's seed SFT when `seed_sft` is on (skipped when done)."""
    if cfg.seed_sft:
        log.info("seed SFT: %s", run.iteration(0).root)
        with chain.iteration(run.iteration(0), 0, SEED_STAGES) as stages:
            run_seed_sft(cfg, run, stages)


def iterate(
    cfg: RunConfig,
    iterations: int,
    force: bool = False,
    argv: list[str] | None = None,
    after_iteration: Callable[[RunPaths, int], bool] | None = None,
) -> RunPaths:
    """Run (or resume) iterations 1..`iterations` of the run `cfg.run_dir`. `after_iteration(run, k)` runs after
    each finished iteration (the CLI passes the evaluation of `eval.every_iteration`); True stops the run."""
    run = open_run(cfg)
    start = time.perf_counter()
    progress = Progress(cfg.run_name, "iteration", iterations)
    chain = RunChain(cfg, force, progress, before_first_run=lambda: record_invocation(cfg, run, argv))
    seed_sft(cfg, run, chain)
    for k in range(1, iterations + 1):
        log.info("iteration %d/%d: %s", k, iterations, run.iteration(k).root)
        with chain.iteration(run.iteration(k), k, STAGES) as stages:
            run_iteration(cfg, run, k, stages)
        if stages.ran:
            log_iteration(Tracker.of(cfg), k, read_json(run.iteration(k).metrics))
        if after_iteration is not None and after_iteration(run, k):
            log.info("stopped after iteration %d of %d", k, iterations)
            break
    log.info("done: %d iterations in %s (%.0f s this invocation)", iterations, run.root, time.perf_counter() - start)
    return run


def prompt_pool(cfg: RunConfig, run: RunPaths, k: int) -> list[str]:
    """Few-shot pool of iteration k: the seed prompts plus, optionally, earlier iterations' kept prompts (as the
    model wrote them: without the checkable instructions added to some)."""
    pool = load_seed_pool(cfg.seed_data.instructions)
    if cfg.prompt_gen.use_previous_iterations:
        for j in range(1, k):
            pool += [row.get("base") or row["text"] for row in read_jsonl(run.iteration(j).prompts, ["text"])]
    return pool


def excluded_prompts(cfg: RunConfig) -> list[str]:
    """What the loop must never train on: the compare prompts (`prompt_gen.exclude`), and the evaluation
    constraint prompts (`eval.prompts`) with their base instructions."""
    excluded = [p.text for p in load_prompt_file(cfg.prompt_gen.exclude)] if cfg.prompt_gen.exclude else []
    if cfg.eval.prompts:
        for p in load_constraint_prompts(cfg.eval.prompts):
            excluded += [p.text, *([p.base] if p.base else [])]
    return excluded


def tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer  # heavy: imported when the pairs stage runs

    return AutoTokenizer.from_pretrained(model)
