"""Problems with checkable answers (Havrilla et al. 2024): from one start model, on the same training problems
with the same sampling budget (`reason.samples` answers per problem per round), each method of
`reason.methods` trains for `reason.rounds` rounds and is measured on the held-out problems after each:

- `expert_iteration`: every correct sample, de-duplicated and accumulated over the rounds; each round
  fine-tunes the *start* model on all of them (Havrilla; ReST-EM);
- `rcrl` (return-conditioned RL): every sample, accumulated, behind a reward token (`CORRECT` / `INCORRECT`)
  in the prompt; fine-tuned from the start model; sampled and measured behind `CORRECT`;
- `dpo_verifier`: DPO (the loop's stage) on one correct vs one incorrect answer per problem;
- `dpo_judge`: DPO on the model's own judge's best vs worst answer per problem (self-rewarding on these
  problems; the verifier is used only to measure).

Reads  `reason.problems` (a problems file) or our generator; the run's model M0
Writes iterations/<run>/reason/
    problems_train.jsonl, problems_test.jsonl   the disjoint splits
    init/           model/ (M0 fine-tuned on the train problems' worked solutions, `reason.sft_init`), eval
    <method>/round_K/   samples.jsonl (k verified answers per train problem), sft_data.jsonl or pairs,
                    model/, eval.jsonl (every test answer: verified, judged), metrics.json, .stages/
    reason.json     one row per (method, round) and the start: maj@1 (greedy), maj@k, pass@k, rerank@k by the
                    self-judge, parse rate, mean tokens, the self-judge's accuracy on (correct, incorrect)
                    pairs, each with a 95% bootstrap interval; answers generated, judge calls, wall time
Each round's stages are markers like the loop's (`runs.StageRunner`): a re-run skips what is done.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from selfreward.artifacts import (
    IterPaths,
    RunPaths,
    file_digest,
    model_digest,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
)
from selfreward.cards import Lineage
from selfreward.config import ConfigError, RunConfig
from selfreward.generation import SamplingSpec
from selfreward.loop import dpo, sft
from selfreward.loop.judge import judge_texts
from selfreward.loop.pairs import _empty_dataset
from selfreward.loop.pipeline import engine_settings
from selfreward.models import base_model, copy_model
from selfreward.reasoning import metrics
from selfreward.reasoning.problems import (
    Difficulty,
    Problem,
    load_problem_file,
    train_test_split,
    write_problem_file,
)
from selfreward.reasoning.verifier import verify
from selfreward.runs import Engine, RunChain, StageRunner, open_run
from selfreward.tracking import Tracker, flatten

log = logging.getLogger(__name__)

METHODS = ("expert_iteration", "rcrl", "dpo_verifier", "dpo_judge")
ROUND_STAGES = ("samples", "train", "eval")
INIT_STAGES = ("sft_data", "sft", "eval")
ASK = "\n\nSolve it step by step. End with a last line of the form `#### <number>`."
CORRECT, INCORRECT = "<reward: correct>", "<reward: incorrect>"


def user_turn(problem: Problem, token: str = "") -> str:
    """The prompt a model sees for a problem (with a return-conditioning token in front for `rcrl`)."""
    return f"{token}\n{problem.prompt}{ASK}" if token else f"{problem.prompt}{ASK}"


def sampling(cfg: RunConfig) -> dict:
    """What a sampling or measuring stage depends on in the reason section: not `rounds` or `methods`, so a
    run can be extended by a round or a method without redoing what is done."""
    r = dataclasses.asdict(cfg.reason)
    return {k: v for k, v in r.items() if k not in ("rounds", "methods")}


def problems(cfg: RunConfig) -> tuple[list[Problem], list[Problem]]:
    """The train and test problems: the first `train_problems` of a file and the next `test_problems`, or
    our generator's disjoint splits."""
    r = cfg.reason
    if r.problems:
        rows = load_problem_file(r.problems)
        if len(rows) < r.train_problems + r.test_problems:
            raise ConfigError(
                f"reason.problems: {r.problems} has {len(rows)} problems, fewer than "
                f"reason.train_problems + reason.test_problems = {r.train_problems + r.test_problems}"
            )
        return rows[: r.train_problems], rows[r.train_problems : r.train_problems + r.test_problems]
    return train_test_split(cfg.seed, r.train_problems, r.test_problems, Difficulty(r.max_number, steps=r.steps))


def sample(gen: Any, cfg: RunConfig, rows: list[Problem], n: int, seed: int, token: str = "", greedy: bool = False):
    """n answers per problem, each verified: rows of {problem_id, index, text, tokens, correct, predicted,
    reason}."""
    r = cfg.reason
    spec = SamplingSpec(
        n=n, temperature=0.0 if greedy else r.temperature, top_p=1.0, max_tokens=r.max_tokens, seed=seed
    )
    outs = gen.chat([[{"role": "user", "content": user_turn(p, token)}] for p in rows], spec)
    samples = []
    for p, group in zip(rows, outs, strict=True):
        for i, c in enumerate(group):
            v = verify(c.text, p.answer)
            samples.append(
                {
                    "problem_id": p.problem_id,
                    "index": i,
                    "text": c.text,
                    "tokens": c.num_tokens,
                    "finish_reason": c.finish_reason,
                    "correct": v.correct,
                    "predicted": v.predicted,
                    "reason": v.reason,
                }
            )
    return samples


def judge_samples(gen: Any, cfg: RunConfig, rows: list[Problem], samples: list[dict], seed: int) -> list[float | None]:
    """The model's own judge score (rubric of `judge.template`, `reason.judge_mode`) of each sample."""
    judge_cfg = dataclasses.replace(cfg.judge, mode=cfg.reason.judge_mode)
    prompt = {p.problem_id: p.prompt for p in rows}
    return [
        j.score for j in judge_texts(gen, judge_cfg, [(prompt[s["problem_id"]], s["text"]) for s in samples], seed)
    ]


def by_problem(rows: list[Problem], samples: list[dict], key: str) -> list[list[Any]]:
    grouped: dict[str, list[Any]] = {p.problem_id: [] for p in rows}
    for s in samples:
        grouped[s["problem_id"]].append(s[key])
    return [grouped[p.problem_id] for p in rows]


def evaluate(gen: Any, cfg: RunConfig, test: list[Problem], token: str, seed: int, out: Path) -> dict[str, Any]:
    """The model behind `gen` on the test problems: one greedy answer (maj@1) and k sampled ones (maj@k,
    pass@k, rerank@k by its own judge); every answer to `out`."""
    k = cfg.reason.samples
    greedy = sample(gen, cfg, test, 1, seed, token, greedy=True)
    sampled = sample(gen, cfg, test, k, seed, token)
    scores = judge_samples(gen, cfg, test, sampled, seed)
    for s, score in zip(sampled, scores, strict=True):
        s["judge_score"] = score
    write_jsonl(out, [{**g, "greedy": True} for g in greedy] + [{**s, "greedy": False} for s in sampled])
    refs = [p.answer for p in test]
    answers = by_problem(test, sampled, "predicted")
    judged = by_problem(test, sampled, "judge_score")
    correct = by_problem(test, sampled, "correct")
    right = [[sc for sc, c in zip(js, cs, strict=True) if c] for js, cs in zip(judged, correct, strict=True)]
    wrong = [[sc for sc, c in zip(js, cs, strict=True) if not c] for js, cs in zip(judged, correct, strict=True)]
    return {
        "maj@1": metrics.mean_with_ci([float(g["correct"]) for g in greedy], seed=seed),
        f"maj@{k}": metrics.mean_with_ci(metrics.maj_at_k_per_problem(answers, refs, k), seed=seed),
        f"pass@{k}": metrics.mean_with_ci([metrics.pass_at_k(k, sum(c), k) for c in correct], seed=seed),
        f"rerank@{k}": metrics.mean_with_ci(metrics.rerank_at_k_per_problem(answers, judged, refs, k), seed=seed),
        "judge_accuracy": metrics.judge_accuracy_on_pairs(right, wrong, seed=seed),
        "parse_rate": sum(s["reason"] is None for s in greedy + sampled) / len(greedy + sampled),
        "mean_tokens": sum(s["tokens"] for s in sampled) / len(sampled),
        "answers": len(greedy) + len(sampled),
        "judge_calls": len(sampled),
    }


# --------------------------------------------------------------------------- training data of each method


def expert_examples(rows: list[Problem], rounds_samples: list[list[dict]]) -> list[dict]:
    """Every correct sample of every round so far, once per (problem, text) (Havrilla's expert iteration)."""
    prompt = {p.problem_id: p for p in rows}
    seen: set[tuple[str, str]] = set()
    out = []
    for samples in rounds_samples:
        for s in samples:
            key = (s["problem_id"], " ".join(s["text"].split()))
            if s["correct"] and s["finish_reason"] != "length" and key not in seen:
                seen.add(key)
                out.append(chat(user_turn(prompt[s["problem_id"]]), s["text"]))
    return out


def rcrl_examples(rows: list[Problem], rounds_samples: list[list[dict]]) -> list[dict]:
    """Every sample of every round so far behind the token of its return (correct / incorrect)."""
    prompt = {p.problem_id: p for p in rows}
    return [
        chat(user_turn(prompt[s["problem_id"]], CORRECT if s["correct"] else INCORRECT), s["text"])
        for samples in rounds_samples
        for s in samples
        if s["finish_reason"] != "length"
    ]


def verifier_pairs(rows: list[Problem], samples: list[dict]) -> list[dict]:
    """Per problem with both: its first correct answer (chosen) vs its first incorrect one (rejected)."""
    out = []
    for p in rows:
        mine = [s for s in samples if s["problem_id"] == p.problem_id]
        good = next((s for s in mine if s["correct"] and s["finish_reason"] != "length"), None)
        bad = next((s for s in mine if not s["correct"]), None)
        if good and bad:
            out.append(pair(p, good["text"], bad["text"]))
    return out


def judge_pairs(rows: list[Problem], samples: list[dict]) -> list[dict]:
    """Per problem: the judge's best-scored ended answer vs its worst, when the scores differ."""
    out = []
    for p in rows:
        mine = [s for s in samples if s["problem_id"] == p.problem_id and s.get("judge_score") is not None]
        ended = [s for s in mine if s["finish_reason"] != "length"]
        if not ended or not mine:
            continue
        best = max(ended, key=lambda s: s["judge_score"])
        worst = min(mine, key=lambda s: s["judge_score"])
        if best["judge_score"] > worst["judge_score"]:
            out.append(pair(p, best["text"], worst["text"]))
    return out


def chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def pair(p: Problem, chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": user_turn(p)}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def save_pairs(it: IterPaths, rows: list[dict]) -> dict:
    import datasets

    write_jsonl(it.pairs, rows)
    dataset = datasets.Dataset.from_list(rows) if rows else _empty_dataset()
    dataset.save_to_disk(str(it.pairs_dataset), num_shards=1 if not rows else None)
    return {"pairs": len(rows)}


# --------------------------------------------------------------------------- the command


def run_round(
    cfg: RunConfig,
    run: RunPaths,
    method: str,
    k: int,
    model: str,
    start: str,
    train_rows: list[Problem],
    test: list[Problem],
    stages: StageRunner,
) -> None:
    """One round of `method`: sample k answers per train problem with `model`, train, measure."""
    it = IterPaths(run.reason / method / f"round_{k}")
    seed = cfg.seed * 1000 + 700 + k
    token = CORRECT if method == "rcrl" else ""
    settings = (sampling(cfg), cfg.judge, engine_settings(cfg))
    digest = model_digest(model)

    def do_samples(engine: Engine) -> dict:
        rows = sample(engine(), cfg, train_rows, cfg.reason.samples, seed, token)
        if method == "dpo_judge":
            for s, score in zip(rows, judge_samples(engine(), cfg, train_rows, rows, seed), strict=True):
                s["judge_score"] = score
        write_jsonl(it.candidates, rows)
        return {"samples": len(rows), "correct": sum(s["correct"] for s in rows)}

    with Engine(cfg, model) as engine:
        stages.run("samples", settings, lambda: do_samples(engine), inputs=lambda: digest)
    earlier = [read_jsonl(IterPaths(run.reason / method / f"round_{j}").candidates) for j in range(1, k + 1)]

    def do_train() -> dict:
        sft_cfg = dataclasses.replace(cfg.sft, max_steps=-1, save_steps=0)
        if method in ("expert_iteration", "rcrl"):
            examples = (expert_examples if method == "expert_iteration" else rcrl_examples)(train_rows, earlier)
            write_jsonl(it.sft_data, examples)
            if not examples:
                copy_model(start, it.model)
                return {"examples": 0, "skipped": True}
            return {"examples": len(examples), **sft.train_sft(start, examples, sft_cfg, it.model, seed)}
        found = (verifier_pairs if method == "dpo_verifier" else judge_pairs)(train_rows, earlier[-1])
        counts = save_pairs(it, found)
        dpo_cfg = dataclasses.replace(cfg.dpo, min_pairs=min(cfg.dpo.min_pairs, 4), save_steps=0)
        return {**counts, **dpo.run(dpo_cfg, model, None, it, seed)}

    stages.run(
        "train",
        (cfg.sft, cfg.dpo, method),
        do_train,
        inputs=lambda: (
            digest,
            model_digest(start),
            [file_digest(IterPaths(run.reason / method / f"round_{j}").candidates) for j in range(1, k + 1)],
        ),
    )
    stages.run(
        "eval",
        settings,
        lambda: measure(cfg, it.model, test, token, seed, it.root / "eval.jsonl"),
        inputs=lambda: model_digest(it.model),
    )


def measure(cfg: RunConfig, model: str | Path, test: list[Problem], token: str, seed: int, out: Path) -> dict:
    with Engine(cfg, str(model)) as engine:
        return evaluate(engine(), cfg, test, token, seed, out)


def reason(cfg: RunConfig, force: bool = False) -> RunPaths:
    """Every method of `reason.methods` from the same start; one table in reason/reason.json."""
    unknown = [m for m in cfg.reason.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"reason.methods: unknown {unknown}; choose from {list(METHODS)}")
    run = open_run(cfg)
    wall = time.perf_counter()
    train_rows, test = problems(cfg)
    write_problem_file(run.reason / "problems_train.jsonl", train_rows)
    write_problem_file(run.reason / "problems_test.jsonl", test)
    chain = RunChain(cfg, force)
    init = IterPaths(run.reason / "init")
    base = base_model(cfg)
    start = str(init.model) if cfg.reason.sft_init else base
    with chain.iteration(init, 0, INIT_STAGES) as stages:
        if cfg.reason.sft_init:
            data = [chat(user_turn(p), p.solution) for p in train_rows if p.solution]
            stages.run(
                "sft_data", [p.problem_id for p in train_rows], lambda: {"examples": write_jsonl(init.sft_data, data)}
            )
            init_cfg = dataclasses.replace(cfg.sft, save_steps=0)
            lineage = Lineage(cfg.model, str(run.root), 0, base)
            stages.run(
                "sft",
                cfg.sft,
                lambda: {
                    "examples": len(data),
                    **sft.train_sft(base, data, init_cfg, init.model, cfg.seed, lineage=lineage),
                },
                inputs=lambda: (model_digest(base), file_digest(init.sft_data)),
            )
        stages.run(
            "eval",
            (sampling(cfg), cfg.judge, engine_settings(cfg)),
            lambda: measure(cfg, start, test, "", cfg.seed, init.root / "eval.jsonl"),
            inputs=lambda: model_digest(start),
        )
    rows = [{"method": "start", "round": 0, **read_json_stage(init, "eval")}]
    tracker = Tracker.of(cfg)
    for method in cfg.reason.methods:
        model = start
        method_chain = RunChain(cfg, force)
        for k in range(1, cfg.reason.rounds + 1):
            it = IterPaths(run.reason / method / f"round_{k}")
            log.info("reason: %s round %d/%d", method, k, cfg.reason.rounds)
            with method_chain.iteration(it, k, ROUND_STAGES) as stages:
                run_round(cfg, run, method, k, model, start, train_rows, test, stages)
            row = {"method": method, "round": k, **read_json_stage(it, "eval")}
            rows.append(row)
            tracker.log(f"reason/{method}", flatten(row), k)
            model = str(it.model)
    write_json(
        run.reason / "reason.json", {"rows": rows, "wall_s_this_invocation": round(time.perf_counter() - wall, 1)}
    )
    return run


def read_json_stage(it: IterPaths, stage: str) -> dict:
    return read_json(it.metrics)["stages"][stage]
