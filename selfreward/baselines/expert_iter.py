"""Expert iteration (rejection-sampling fine-tuning), a baseline for the self-rewarding loop: each round the
current model answers the prompts K times, judges its answers with the loop's judge, and is fine-tuned
(SFT, `sft.train_sft`) on its best answer to each prompt whose score reaches `expert_iter.threshold`.

Reads  the prompts: `--prompts FILE` / `expert_iter.prompts` (JSONL rows with `text`, e.g. an iteration's
       prompts.jsonl, or with `instruction`, e.g. the seed file), else iterations/<run>/iter_1/prompts.jsonl;
       the start model: M1 of the seed SFT (iter_0, run first when missing) with `seed_sft`, else `model`
Writes iterations/<run>/expert_iter/round_K/ (K = 1..N), each:
           prompts.jsonl       the prompts (stage prompts)
           candidates.jsonl    expert_iter.samples answers per prompt (stage candidates: responses.run)
           judgements.jsonl    the judge's samples and mean score per answer (stage judgements: judge.run)
           sft_data.jsonl      the kept best answers as chat examples (stage sft_data)
           model/, sft_log.jsonl   the fine-tuned model and its trainer logs (stage sft)
           metrics.json, .stages/  per-stage counts, wall time, peak memory; markers as in the loop
       iterations/<run>/expert_iter/metrics.json: every round's numbers and the final model folder

Round K starts from round K-1's model. With fewer than `expert_iter.min_examples` kept answers the round's
model is its start model, copied. Re-running skips finished rounds and refuses a changed config unless
forced, like `selfreward iterate`.

Run: `selfreward expert-iter --config configs/default.yaml [--rounds N] [--prompts FILE] [--force]`
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from selfreward.artifacts import (
    DataError,
    IterPaths,
    RunPaths,
    file_digest,
    model_digest,
    project_file,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
)
from selfreward.cards import Lineage
from selfreward.config import RunConfig
from selfreward.generation import Engine
from selfreward.inputs import load_examples, load_prompt_file
from selfreward.loop import sft
from selfreward.loop.pipeline import answer_and_judge, seed_sft
from selfreward.models import copy_model, model_of_iteration
from selfreward.records import Candidate, Judgement, Prompt, required_fields, to_row
from selfreward.runs import Progress, RunChain, StageRunner, open_run
from selfreward.tracking import Tracker, flatten

log = logging.getLogger(__name__)

ROUND_STAGES = ("prompts", "candidates", "judgements", "sft_data", "sft")
SOURCE = "expert-iter"


def select_best(candidates: list[dict], judgements: list[dict], threshold: float) -> tuple[list[dict], dict]:
    """Per prompt, the candidate with the highest judge score (the first of equals), kept if its score is at
    least `threshold`; unscored candidates (score None) are never chosen. Returns the kept candidates (rows
    with their `score`) in prompt order, and counts."""
    scores = {j["candidate_id"]: j["score"] for j in judgements}
    best: dict[str, dict] = {}
    for c in candidates:
        score = scores.get(c["candidate_id"])
        if score is None:
            continue
        current = best.get(c["prompt_id"])
        if current is None or score > current["score"]:
            best[c["prompt_id"]] = {**c, "score": score}
    prompts = list(dict.fromkeys(c["prompt_id"] for c in candidates))
    kept = [best[p] for p in prompts if p in best and best[p]["score"] >= threshold]
    scored = [s for s in scores.values() if s is not None]
    return kept, {
        "prompts": len(prompts),
        "prompts_unscored": sum(p not in best for p in prompts),
        "prompts_below_threshold": sum(p in best and best[p]["score"] < threshold for p in prompts),
        "kept": len(kept),
        "mean_candidate_score": sum(scored) / len(scored) if scored else None,
        "mean_best_score": sum(b["score"] for b in best.values()) / len(best) if best else None,
        "mean_kept_score": sum(k["score"] for k in kept) / len(kept) if kept else None,
    }


def write_data(it: IterPaths, threshold: float) -> dict:
    """Stage sft_data: the kept best answers of the round as chat examples."""
    prompts = {r["prompt_id"]: r["text"] for r in read_jsonl(it.prompts, required_fields(Prompt))}
    candidates = read_jsonl(it.candidates, required_fields(Candidate))
    judgements = read_jsonl(it.judgements, required_fields(Judgement))
    kept, counts = select_best(candidates, judgements, threshold)
    write_jsonl(
        it.sft_data,
        (
            {
                "messages": [
                    {"role": "user", "content": prompts[k["prompt_id"]]},
                    {"role": "assistant", "content": k["text"]},
                ],
                "source": SOURCE,
                "prompt_id": k["prompt_id"],
                "candidate_id": k["candidate_id"],
                "score": k["score"],
            }
            for k in kept
        ),
    )
    return counts


def train(cfg: RunConfig, model: str, it: IterPaths, seed: int, tracker: Tracker | None = None) -> dict:
    """Stage sft: fine-tune `model` on the kept answers (too few: the model is copied unchanged)."""
    examples = load_examples(it.sft_data)
    if len(examples) < cfg.expert_iter.min_examples:
        log.warning("expert iteration: %d kept answers < min_examples; the model is copied unchanged", len(examples))
        copy_model(model, it.model)
        write_jsonl(it.sft_log, [])
        return {"skipped": True, "examples": len(examples)}
    lineage = Lineage(cfg.model, str(it.root.parent.parent), int(it.root.name.split("_")[-1]), model)
    metrics = sft.train_sft(
        model,
        examples,
        cfg.sft,
        it.model,
        seed,
        log_path=it.sft_log,
        tracker=tracker,
        stage=f"expert_iter/{it.root.name}/sft",
        lineage=lineage,
        method="expert_iteration",
        data_file=it.sft_data,
        checkpoints=it.checkpoints("sft"),
    )
    return {"skipped": False, **metrics}


def run_round(cfg: RunConfig, it: IterPaths, model: str, prompts: list[Prompt], k: int, stages: StageRunner) -> None:
    """One round: answer, judge, keep the best answers, fine-tune; each step a stage with a marker."""
    x = cfg.expert_iter
    seed = cfg.seed * 1000 + 500 + k
    answering = dataclasses.replace(cfg, responses=dataclasses.replace(cfg.responses, n=x.samples))
    stages.metrics["start_model"] = model
    rows = [to_row(p) for p in prompts]
    start = model_digest(model)
    with Engine(cfg, model) as engine:
        stages.run("prompts", rows, lambda: {"prompts": write_jsonl(it.prompts, rows)})
        answer_and_judge(answering, it, seed, engine, stages, model)
        stages.metrics["engine"] = engine.close()
    stages.run(
        "sft_data",
        x.threshold,
        lambda: write_data(it, x.threshold),
        inputs=lambda: [file_digest(p) for p in (it.prompts, it.candidates, it.judgements)],
    )
    stages.run(
        "sft",
        (cfg.sft, x.min_examples),
        lambda: train(cfg, model, it, seed, Tracker.of(cfg)),
        inputs=lambda: (start, file_digest(it.sft_data)),
    )


def prompts_file(cfg: RunConfig, run: RunPaths, override: str | None) -> Path:
    path = override or cfg.expert_iter.prompts
    if path:
        return project_file(path)
    default = run.iteration(1).prompts
    if not default.exists():
        raise DataError(
            f"{default}: no such file; run `selfreward iterate` first or pass --prompts FILE "
            "(JSONL with `text` or `instruction`)"
        )
    return default


def expert_iterate(
    cfg: RunConfig, rounds: int | None = None, prompts: str | None = None, force: bool = False
) -> RunPaths:
    """Run (or resume) rounds 1..N of expert iteration in iterations/<run>/expert_iter/."""
    run = open_run(cfg)
    rounds = rounds or cfg.expert_iter.rounds
    source = prompts_file(cfg, run, prompts)
    rows = load_prompt_file(source)
    if cfg.expert_iter.max_prompts:
        rows = rows[: cfg.expert_iter.max_prompts]
    start = time.perf_counter()
    chain = RunChain(cfg, force, Progress(cfg.run_name, "round", rounds, cfg.run_dir))
    seed_sft(cfg, run, chain)
    model = model_of_iteration(cfg, run, 0)
    summary = []
    for k in range(1, rounds + 1):
        it = run.expert_round(k)
        log.info("expert iteration round %d/%d: %s (%d prompts from %s)", k, rounds, it.root, len(rows), source)
        with chain.iteration(it, k, ROUND_STAGES) as stages:
            run_round(cfg, it, model, rows, k, stages)
        summary.append(read_json(it.metrics))
        if stages.ran:
            Tracker.of(cfg).log("expert_iter", flatten(summary[-1].get("stages", {})), k)
        model = str(it.model)
    wall = time.perf_counter() - start
    write_json(
        run.expert_iter_metrics,
        {"prompts_file": str(source), "prompts": len(rows), "rounds": summary, "final_model": model},
    )
    log.info("expert iteration: %d rounds, %.0f s this invocation; final model %s", rounds, wall, model)
    return run
