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

from selfreward.artifacts import IterPaths, RunPaths, file_digest, read_json, read_jsonl
from selfreward.cards import Lineage
from selfreward.config import RunConfig
from selfreward.constraints.data import load_constraint_prompts
from selfreward.generation import Engine
from selfreward.inputs import load_prompt_file, load_seed_pool
from selfreward.launch import train
from selfreward.loop import dpo, judge, meta_judge, pairs, prompt_gen, responses, sft
from selfreward.models import base_model, iteration_seed, model_of_iteration, reference_for
from selfreward.progress import quiet_libraries
from selfreward.runs import Progress, RunChain, StageRunner, open_run, record_invocation
from selfreward.tracking import Tracker, log_iteration

log = logging.getLogger(__name__)

STAGES = tuple(s.STAGE.name for s in (prompt_gen, responses, judge, pairs, dpo))
"""prompts, candidates, judgements, pairs, dpo: the figure's five stages, in order."""


def stages_of(cfg: RunConfig, k: int) -> tuple[str, ...]:
    """The stages iteration k runs, in the order they run: the five, with `anchors` before the candidates
    (`pairs.rejected_from: initial`, from iteration 2) and `meta_judgements` after the judgements
    (`meta_judge.enabled`)."""
    names = list(STAGES)
    if anchored(cfg, k):
        names.insert(names.index(responses.STAGE.name), responses.ANCHOR_STAGE.name)
    if cfg.meta_judge.enabled:
        names.insert(names.index(judge.STAGE.name) + 1, meta_judge.STAGE.name)
    return tuple(names)


def anchored(cfg: RunConfig, k: int) -> bool:
    """Whether iteration k takes its rejected answers from the run's first model (in iteration 1 it is the
    current model)."""
    return cfg.pairs.rejected_from == "initial" and k > 1


SEED_STAGES = (sft.DATA_STAGE.name, sft.TRAIN_STAGE.name)


def run_iteration(cfg: RunConfig, run: RunPaths, k: int, stages: StageRunner) -> None:
    """M_{k-1} -> M_k: the five stages of one iteration, each reading and writing files in iter_k/. Each stage's
    fingerprint is what its module's `STAGE` declares, plus the models it loads and the few-shot pool."""
    it = run.iteration(k)
    model = model_of_iteration(cfg, run, k - 1)
    stages.metrics["start_model"] = model
    reference = reference_for(cfg, run, k)
    pool = prompt_pool(cfg, run, k)
    seed = iteration_seed(cfg, k)
    lineage = Lineage(cfg.model, str(run.root), k, model)

    with Engine(cfg, model) as engine:  # started on first use, serves stages 1-3
        stages.run_stage(
            prompt_gen.STAGE,
            cfg,
            lambda: prompt_gen.run(engine(), cfg.prompt_gen, pool, it, k, seed, excluded_prompts(cfg)),
            models=[model],
            extra=pool,
        )
        if anchored(cfg, k):
            answer_with_initial_model(cfg, run, it, seed, engine, stages)
        answer_and_judge(cfg, it, seed, engine, stages, model, anchors=anchored(cfg, k))
        if cfg.meta_judge.enabled:
            stages.run_stage(
                meta_judge.STAGE, cfg, lambda: meta_judge.run(engine(), cfg.meta_judge, it, seed), models=[model]
            )
        stages.metrics["engine"] = engine.close()  # the engine's memory is released before training
    made_earlier = [file_digest(f) for f in (it.anchors, it.meta_judgements) if f.exists()]
    stages.run_stage(
        pairs.STAGE,
        cfg,
        lambda: pairs.run(cfg.pairs, it, tokenizer(model), cfg.dpo.max_length, cfg.judge, lineage, cfg.meta_judge),
        models=[model],
        extra=made_earlier or None,
    )
    stages.run_stage(
        dpo.STAGE,
        cfg,
        lambda: train(
            cfg,
            run,
            "selfreward.loop.dpo",
            ["--iter", str(k)],
            lambda: dpo.run(cfg.dpo, model, reference, it, seed, Tracker.of(cfg), lineage),
        ),
        models=[model, reference],
        extra=file_digest(it.judge_pairs) if cfg.meta_judge.enabled else None,
    )


def answer_with_initial_model(
    cfg: RunConfig, run: RunPaths, it: IterPaths, seed: int, engine: Engine, stages: StageRunner
) -> None:
    """Anchored rejection: the run's first model answers the iteration's prompts (anchors.jsonl), in an engine of
    its own; the current model's engine is stopped first (one engine's memory at a time) and restarts on use."""
    initial = model_of_iteration(cfg, run, 0)
    if (before := engine.close()) is not None:
        stages.metrics["engine_before_anchors"] = before
    with Engine(cfg, initial) as anchor_engine:
        stages.run_stage(
            responses.ANCHOR_STAGE,
            cfg,
            lambda: responses.run_anchors(anchor_engine(), cfg.responses, it, seed),
            models=[initial],
        )
        stages.metrics["anchor_engine"] = anchor_engine.close()


def answer_and_judge(
    cfg: RunConfig, it: IterPaths, seed: int, engine: Engine, stages: StageRunner, model: str, anchors: bool = False
) -> None:
    """Stages 2-3 on `it.prompts` (shared with expert iteration): candidates (`cfg.responses`), then `model`
    judges them (and the initial model's answers, `anchors`)."""
    stages.run_stage(responses.STAGE, cfg, lambda: responses.run(engine(), cfg.responses, it, seed), models=[model])
    stages.run_stage(
        judge.STAGE,
        cfg,
        lambda: judge.run(engine(), cfg.judge, it, seed, anchors=anchors),
        models=[model],
        extra=file_digest(it.anchors) if anchors else None,
    )


def run_seed_sft(cfg: RunConfig, run: RunPaths, stages: StageRunner) -> None:
    """M0 -> M1 (iter_0/): the seed IFT + EFT examples, then SFT on them."""
    it = run.iteration(0)
    base = base_model(cfg)
    stages.metrics["start_model"] = base
    stages.run_stage(sft.DATA_STAGE, cfg, lambda: sft.write_data(cfg.seed_data, cfg.judge, cfg.sft, it, cfg.seed))
    lineage = Lineage(cfg.model, str(run.root), 0, base)  # M0 as configured: the card's base model and licence
    stages.run_stage(
        sft.TRAIN_STAGE,
        cfg,
        lambda: train(
            cfg,
            run,
            "selfreward.loop.sft",
            [],
            lambda: sft.run(cfg.sft, base, it, cfg.seed, Tracker.of(cfg), lineage),
        ),
        models=[base],
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
    quiet_libraries()
    start = time.perf_counter()
    progress = Progress(cfg.run_name, "iteration", iterations, run.root)
    chain = RunChain(cfg, force, progress, before_first_run=lambda: record_invocation(cfg, run, argv))
    seed_sft(cfg, run, chain)
    for k in range(1, iterations + 1):
        log.info("iteration %d/%d: %s", k, iterations, run.iteration(k).root)
        with chain.iteration(run.iteration(k), k, stages_of(cfg, k)) as stages:
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
