"""Problems with checkable answers (Havrilla et al. 2024): from one start model, on the same training problems
with the same sampling budget (`reason.samples` answers per problem per round), each method of
`reason.methods` trains for `reason.rounds` rounds and is measured on the held-out problems after each:

- `expert_iteration`: every correct sample, de-duplicated and accumulated over the rounds; each round
  fine-tunes the *initial* model M0 on the worked solutions (with `reason.sft_init`) and all of them, the
  recipe of the start on more data (Havrilla; ReST-EM); round K samples with round K-1's model;
- `expert_iteration_continued`: the earlier behaviour of `selfreward expert-iter`, with the verifier instead of
  the judge: one correct sample per problem from this round only, fine-tuned from the previous round's model;
- `rcrl` (return-conditioned RL): every sample, accumulated, behind a reward token (`CORRECT` / `INCORRECT`)
  in the prompt; fine-tuned from the start model; sampled and measured behind `CORRECT`;
- `ppo_verifier`, `ppo_orm`: the PPO baseline (`ppo.PPOTrainer`, the `ppo:` section) from the previous round's
  model, `samples` rollouts per problem per round, with the verifier's 0/1 reward (sparse) or the outcome
  reward model's score (dense in value: a learned score for every answer);
- `dpo_verifier`: DPO (the loop's stage) on one correct vs one incorrect answer per problem;
- `dpo_judge`: DPO on the model's own judge's best vs worst answer per problem (self-rewarding on these
  problems; the verifier is used only to measure);
- `sft_solutions`: a control for `expert_iteration`, which listed before it: the start's recipe from M0 with as
  many examples as expert iteration's round K trained on, all of them worked solutions (each repeated), so the
  same optimiser steps without a single sample; expert iteration's gain over it is what its samples add.

The outcome reward model (ORM, `reason.orm`) is TRL's RewardTrainer (`rewards.train_reward_model`) on the
start model's own answers to the training problems, labelled by the verifier: every (correct, incorrect)
pair of answers to a problem, the worked solution counted as one more correct answer. It reranks the test
answers of every row (rerank@k by ORM) and is the reward of `ppo_orm`.

Reads  `reason.problems` (a problems file) or our generator; the run's model M0
Writes iterations/<run>/reason/
    problems_train.jsonl, problems_test.jsonl   the disjoint splits
    init/           model/ (M0 fine-tuned on the train problems' worked solutions, `reason.sft_init`), eval
    init/orm/       candidates.jsonl (the start's verified answers), pairs.jsonl + pairs/, model/ (the ORM),
                    reward_model_log.jsonl
    <method>/round_K/   candidates.jsonl (k verified answers per train problem; PPO: its rollouts),
                    sft_data.jsonl or pairs, ppo_log.jsonl (PPO), model/, eval.jsonl (every test answer:
                    verified, judged, ORM-scored), metrics.json, .stages/
    reason.json     one row per (method, round) and the start: maj@1 (greedy) and its gain over the start
                    (paired by problem), maj@k, pass@k, rerank@k by the self-judge and by the ORM, parse
                    rate, mean tokens, the self-judge's and the ORM's accuracy on (correct, incorrect) pairs,
                    each with a 95% bootstrap interval; answers generated, judge calls, wall time
Each round's stages are markers like the loop's (`runs.StageRunner`): a re-run skips what is done. Every
training job (the SFT start, the ORM, each round's SFT / DPO / PPO) runs in a child process (`main`, `--job`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from selfreward.artifacts import (
    DataError,
    IterPaths,
    RunPaths,
    file_digest,
    model_digest,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
)
from selfreward.baselines.ppo import PPOTrainer, check_shares, ddp_launch
from selfreward.baselines.rewards import ModelReward, VerifierReward, check_rm_batch, train_reward_model
from selfreward.cards import Lineage, model_card
from selfreward.config import ConfigError, JudgeConfig, PairsConfig, PPOConfig, ReasonConfig, RunConfig, fingerprint
from selfreward.generation import Engine, SamplingSpec, engine_settings
from selfreward.launch import is_main_process, stage_main, stage_parser, stage_setup, train
from selfreward.loop import dpo, sft
from selfreward.loop.judge import judge_texts
from selfreward.loop.pairs import Scored, empty_pairs_dataset, score_se, select_pair
from selfreward.models import base_model, copy_model
from selfreward.reason import metrics
from selfreward.reason.problems import (
    Difficulty,
    Problem,
    load_problem_file,
    train_test_split,
    write_problem_file,
)
from selfreward.reason.verifier import verify
from selfreward.records import VerifiedAnswer, to_row
from selfreward.runs import RunChain, StageRunner, file_digests, open_run
from selfreward.tracking import Tracker, flatten

log = logging.getLogger(__name__)

ROUND_STAGES = ("samples", "train", "eval")
PPO_STAGES = ("train", "eval")
INIT_STAGES = ("sft_data", "sft", "orm_samples", "orm", "eval")
ASK = "\n\nSolve it step by step. End with a last line of the form `#### <number>`."
CORRECT, INCORRECT = "<reward: correct>", "<reward: incorrect>"


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the study's table: how a method's round makes its data and how it trains.

    `trains`: `sft` (on `examples`), `dpo` (on `pairs`) or `ppo` (sampling while it trains, with `reward`);
    `origin`: the model a round trains from: `base` (M0), `start` (the SFT start) or `previous` (the round
    before's model, the start in round 1); `samples`: whether a round first samples `reason.samples` answers per
    training problem (and `judged`: the self-judge scores them); `token`: the return-conditioning token a
    round samples and is measured behind."""

    trains: Literal["sft", "dpo", "ppo"]
    origin: Literal["base", "start", "previous"] = "previous"
    examples: Callable[[RoundData], list[dict]] | None = None
    pairs: Callable[[RoundData], list[dict]] | None = None
    reward: Literal["verifier", "orm"] | None = None
    samples: bool = True
    judged: bool = False
    token: str = ""
    control_of: str | None = None
    """A control of another method: its data is sized by that method's round (listed before it)."""

    @property
    def stages(self) -> tuple[str, ...]:
        """A round's stages: PPO samples while it trains, and a method that samples nothing skips `samples`."""
        return ROUND_STAGES if self.samples and self.trains != "ppo" else PPO_STAGES


@dataclasses.dataclass(frozen=True)
class RoundData:
    """What a round's data is made from: the training problems, each earlier round's samples of this method
    (the last is this round's), the start's worked solutions, and expert iteration's samples (its control)."""

    rows: list[Problem]
    rounds: list[list[dict]]
    demonstrations: list[dict]
    expert_rounds: list[list[dict]]
    pairs_cfg: PairsConfig


def stages_of(method: str) -> tuple[str, ...]:
    """A round's stages (`Method.stages`)."""
    return METHODS[method].stages


def user_turn(problem: Problem, token: str = "") -> str:
    """The prompt a model sees for a problem (with a return-conditioning token in front for `rcrl`)."""
    return f"{token}\n{problem.prompt}{ASK}" if token else f"{problem.prompt}{ASK}"


def sampling(r: ReasonConfig) -> dict:
    """What a sampling or measuring stage depends on in the reason section: not `rounds` or `methods`, so a
    run can be extended by a round or a method without redoing what is done, nor what only some stages read
    (`judge_mode`: `judging`; `orm` and `sft_init`: their models' digests are the stages' inputs)."""
    return {
        k: v
        for k, v in dataclasses.asdict(r).items()
        if k not in ("rounds", "methods", "orm", "sft_init", "judge_mode")
    }


def judging(judge: JudgeConfig, mode: str) -> tuple:
    """What a stage that judges depends on: the judge section, the template's contents and the judge mode."""
    return judge, file_digests([judge.template]), mode


def reward_model_settings(ppo: PPOConfig) -> dict:
    """The `ppo:` settings the outcome reward model is trained with (`rm_*`, `precision`)."""
    return {k: v for k, v in dataclasses.asdict(ppo).items() if k.startswith("rm_") or k == "precision"}


def problems_key(train_rows: list[Problem], test: list[Problem]) -> str:
    """Every stage's chain starts from the problems' contents: an edited problems file (or generator) is a
    changed config, refused unless forced."""
    return fingerprint([dataclasses.asdict(p) for p in train_rows + test])


def problems(r: ReasonConfig, seed: int) -> tuple[list[Problem], list[Problem]]:
    """The train and test problems: the first `train_problems` of a file and the next `test_problems`, or
    our generator's disjoint splits (drawn with `seed`)."""
    if r.problems:
        rows = load_problem_file(r.problems)
        if len(rows) < r.train_problems + r.test_problems:
            raise ConfigError(
                f"reason.problems: {r.problems} has {len(rows)} problems, fewer than "
                f"reason.train_problems + reason.test_problems = {r.train_problems + r.test_problems}"
            )
        return rows[: r.train_problems], rows[r.train_problems : r.train_problems + r.test_problems]
    return train_test_split(seed, r.train_problems, r.test_problems, Difficulty(r.max_number, steps=r.steps))


def sample(
    gen: Any, r: ReasonConfig, rows: list[Problem], n: int, seed: int, token: str = "", greedy: bool = False
) -> list[dict]:
    """n answers per problem, each verified: rows of {problem_id, index, text, tokens, correct, predicted,
    reason}."""
    spec = SamplingSpec(
        n=n, temperature=0.0 if greedy else r.temperature, top_p=1.0, max_tokens=r.max_tokens, seed=seed
    )
    outs = gen.chat([[{"role": "user", "content": user_turn(p, token)}] for p in rows], spec)
    samples = []
    for p, group in zip(rows, outs, strict=True):
        for i, c in enumerate(group):
            v = verify(c.text, p.answer)
            answer = VerifiedAnswer(
                p.problem_id, i, c.text, c.num_tokens, c.finish_reason, v.correct, v.predicted, v.reason
            )
            samples.append(to_row(answer))
    return samples


def judge_samples(
    gen: Any, judge: JudgeConfig, mode: str, rows: list[Problem], samples: list[dict], seed: int
) -> None:
    """The model's own judge score (rubric of `judge.template` in `mode`, `reason.judge_mode`) of each sample,
    and its standard error from the judge's own samples (`judge_score`, `judge_se`), in place."""
    judge_cfg = dataclasses.replace(judge, mode=mode)
    prompt = {p.problem_id: p.prompt for p in rows}
    judged = judge_texts(gen, judge_cfg, [(prompt[s["problem_id"]], s["text"]) for s in samples], seed)
    for s, j in zip(samples, judged, strict=True):
        s["judge_score"], s["judge_se"] = j.score, score_se([dataclasses.asdict(x) for x in j.samples])


def by_problem(rows: list[Problem], samples: list[dict], key: str) -> list[list[Any]]:
    """`key` of the samples of each problem of `rows`, in sampling order."""
    grouped: dict[str, list[Any]] = {p.problem_id: [] for p in rows}
    for s in samples:
        grouped[s["problem_id"]].append(s[key])
    return [grouped[p.problem_id] for p in rows]


def evaluate(
    engine: Engine, cfg: RunConfig, test: list[Problem], token: str, seed: int, out: Path, orm: Path | None = None
) -> dict[str, Any]:
    """The model behind `engine` on the test problems: one greedy answer (maj@1) and k sampled ones (maj@k,
    pass@k, rerank@k by its own judge and, with `orm`, by the outcome reward model); every answer to `out`.
    The engine is closed before the ORM scores, so the two never hold memory or cores at once."""
    gen = engine()
    k = cfg.reason.samples
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 1)

    greedy = sample(gen, cfg.reason, test, 1, seed, token, greedy=True)
    seconds = {"greedy": lap()}
    sampled = sample(gen, cfg.reason, test, k, seed, token)
    seconds["sampled"] = lap()
    judge_samples(gen, cfg.judge, cfg.reason.judge_mode, test, sampled, seed)
    seconds["judged"] = lap()
    engine.close()
    if orm is not None:
        prompt = {p.problem_id: user_turn(p) for p in test}
        reward = ModelReward(orm, cfg.ppo.rm_max_length, precision=cfg.ppo.precision)
        orm_scores = reward([prompt[s["problem_id"]] for s in sampled], [s["text"] for s in sampled])
        for s, score in zip(sampled, orm_scores, strict=True):
            s["orm_score"] = score
        seconds["orm_scored"] = lap()
    log.info("reason eval: %s", ", ".join(f"{name} {t:.0f} s" for name, t in seconds.items()))
    write_jsonl(out, [{**g, "greedy": True} for g in greedy] + [{**s, "greedy": False} for s in sampled])
    refs = [p.answer for p in test]
    answers = by_problem(test, sampled, "predicted")
    correct = by_problem(test, sampled, "correct")
    result = {
        "maj@1": metrics.mean_with_ci([float(g["correct"]) for g in greedy], seed=seed),
        f"maj@{k}": metrics.mean_with_ci(metrics.maj_at_k_per_problem(answers, refs, k), seed=seed),
        f"pass@{k}": metrics.mean_with_ci([metrics.pass_at_k(k, sum(c), k) for c in correct], seed=seed),
    }
    for name, key in (("judge", "judge_score"), ("orm", "orm_score")):
        if name == "orm" and orm is None:
            continue
        scored = by_problem(test, sampled, key)
        right = [[sc for sc, c in zip(xs, cs, strict=True) if c] for xs, cs in zip(scored, correct, strict=True)]
        wrong = [[sc for sc, c in zip(xs, cs, strict=True) if not c] for xs, cs in zip(scored, correct, strict=True)]
        suffix = "" if name == "judge" else "_orm"
        result[f"rerank@{k}{suffix}"] = metrics.mean_with_ci(
            metrics.rerank_at_k_per_problem(answers, scored, refs, k), seed=seed
        )
        result[f"{name}_accuracy"] = metrics.judge_accuracy_on_pairs(right, wrong, seed=seed)
    return {
        **result,
        "parse_rate": sum(s["reason"] is None for s in greedy + sampled) / len(greedy + sampled),
        "mean_tokens": sum(s["tokens"] for s in sampled) / len(sampled),
        "answers": len(greedy) + len(sampled),
        "judge_calls": len(sampled),
        "seconds": seconds,
    }


# --------------------------------------------------------------------------- training data of each method


def expert_examples(
    rows: list[Problem], rounds_samples: list[list[dict]], demonstrations: list[dict] | None = None
) -> list[dict]:
    """The `demonstrations` (the worked solutions of the SFT start), then every correct sample of every round
    so far, once per (problem, text) (Havrilla's expert iteration)."""
    prompt = {p.problem_id: p for p in rows}
    seen: set[tuple[str, str]] = set()
    out = list(demonstrations or [])
    for samples in rounds_samples:
        for s in samples:
            key = (s["problem_id"], " ".join(s["text"].split()))
            if s["correct"] and s["finish_reason"] != "length" and key not in seen:
                seen.add(key)
                out.append(chat(user_turn(prompt[s["problem_id"]]), s["text"]))
    return out


def solution_examples(demonstrations: list[dict], n: int) -> list[dict]:
    """`n` examples, all worked solutions: the demonstrations repeated in order (`sft_solutions`)."""
    if not demonstrations:
        return []
    return [demonstrations[i % len(demonstrations)] for i in range(n)]


def continued_examples(rows: list[Problem], samples: list[dict]) -> list[dict]:
    """Per problem, its first correct ended sample of this round (`selfreward expert-iter`'s one best answer
    per prompt, chosen by the verifier)."""
    out = []
    for p in rows:
        ended = [s for s in samples if s["problem_id"] == p.problem_id and s["finish_reason"] != "length"]
        good = next((s for s in ended if s["correct"]), None)
        if good:
            out.append(chat(user_turn(p), good["text"]))
    return out


def orm_pairs(rows: list[Problem], samples: list[dict]) -> list[dict]:
    """The outcome reward model's training pairs: per problem, each (correct, incorrect) pair of its answers,
    at most as many as it has samples. Its worked solution (when it has one) counts as one more correct answer,
    after its own correct samples, so that problems the start never solves still teach the ORM."""
    out = []
    for p in rows:
        mine = [s for s in samples if s["problem_id"] == p.problem_id]
        good = [s["text"] for s in mine if s["correct"] and s["finish_reason"] != "length"]
        good += [p.solution] if p.solution else []
        bad = [s["text"] for s in mine if not s["correct"]]
        out += [pair(p, g, b) for g in good for b in bad][: len(mine)]
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


def judge_pairs(rows: list[Problem], samples: list[dict], cfg: PairsConfig | None = None) -> list[dict]:
    """Per problem: the self-judge's pair by the loop's own rules (`loop.pairs.select_pair`: the best ended answer
    vs the worst, ties and pairs within the judge's noise dropped, length control)."""
    out = []
    for p in rows:
        scored = [
            Scored(
                f"{s['problem_id']}-{s['index']}-{i}",
                s["text"],
                s["judge_score"],
                s.get("tokens", len(s["text"])),
                se=s.get("judge_se") or 0.0,
                ended=s["finish_reason"] != "length",
            )
            for i, s in enumerate(samples)
            if s["problem_id"] == p.problem_id and s.get("judge_score") is not None
        ]
        chosen = select_pair(scored, cfg or PairsConfig())
        if isinstance(chosen, tuple):
            out.append(pair(p, chosen[0].text, chosen[1].text))
    return out


METHODS: dict[str, Method] = {
    # Havrilla's expert iteration: every correct sample so far, from M0 with the start's recipe
    "expert_iteration": Method("sft", "base", examples=lambda d: expert_examples(d.rows, d.rounds, d.demonstrations)),
    # one correct sample per problem of this round, from the previous round's model
    "expert_iteration_continued": Method("sft", examples=lambda d: continued_examples(d.rows, d.rounds[-1])),
    "rcrl": Method("sft", "start", examples=lambda d: rcrl_examples(d.rows, d.rounds), token=CORRECT),
    "ppo_verifier": Method("ppo", reward="verifier", samples=False),
    "ppo_orm": Method("ppo", reward="orm", samples=False),
    "dpo_verifier": Method("dpo", pairs=lambda d: verifier_pairs(d.rows, d.rounds[-1])),
    "dpo_judge": Method("dpo", pairs=lambda d: judge_pairs(d.rows, d.rounds[-1], d.pairs_cfg), judged=True),
    # expert iteration's control: as many examples as its round trained on, all worked solutions
    "sft_solutions": Method(
        "sft",
        "base",
        examples=lambda d: solution_examples(
            d.demonstrations, len(expert_examples(d.rows, d.expert_rounds, d.demonstrations))
        ),
        samples=False,
        control_of="expert_iteration",
    ),
}
"""The study's methods (`reason.methods`): name -> how its data is made and how it trains."""


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
    dataset = datasets.Dataset.from_list(rows) if rows else empty_pairs_dataset()
    dataset.save_to_disk(str(it.pairs_dataset), num_shards=1 if not rows else None)
    return {"pairs": len(rows)}


# --------------------------------------------------------------------------- the command


@dataclasses.dataclass(frozen=True)
class Start:
    """Where every method starts: `base` (M0), `start` (M0 after the SFT initialisation, or M0), the worked
    solutions it was fine-tuned on as chat examples, and the outcome reward model (None: none trained)."""

    base: str
    start: str
    demonstrations: list[dict]
    orm: Path | None


def round_seed(seed: int, k: int) -> int:
    return seed * 1000 + 700 + k


def round_paths(run: RunPaths, method: str, k: int) -> IterPaths:
    return IterPaths(run.reason / method / f"round_{k}")


def starting_point(cfg: RunConfig, run: RunPaths, train_rows: list[Problem]) -> Start:
    """Where every method starts, from the run's files (the init stages made them)."""
    base = base_model(cfg)
    init = IterPaths(run.reason / "init")
    start = str(init.model) if cfg.reason.sft_init else base
    demonstrations = [chat(user_turn(p), p.solution) for p in train_rows if p.solution] if cfg.reason.sft_init else []
    orm = IterPaths(init.root / "orm").model
    return Start(base, start, demonstrations, orm if cfg.reason.orm and (orm / "config.json").exists() else None)


def round_model(run: RunPaths, method: str, k: int, s0: Start) -> str:
    """The model round k of `method` samples with (and continues from): round k-1's, or the start."""
    return str(round_paths(run, method, k - 1).model) if k > 1 else s0.start


def ppo_round(
    cfg: RunConfig,
    run: RunPaths,
    it: IterPaths,
    method: str,
    model: str,
    s0: Start,
    train_rows: list[Problem],
    seed: int,
) -> dict:
    """PPO from `model` with `reason.samples` rollouts per training problem (the sampling budget of the other
    methods), reward = the verifier's 0/1 or the ORM's score; every rollout verified into candidates.jsonl."""
    if METHODS[method].reward == "orm" and s0.orm is None:
        raise DataError(
            f"{it.root}: ppo_orm needs the outcome reward model, and none was trained "
            "(reason.orm is false, or the start's answers gave no (correct, incorrect) pair)"
        )
    r = cfg.reason
    steps = len(train_rows) * r.samples // cfg.ppo.rollout_batch_size  # divides: checked by `reason`
    ppo_cfg = dataclasses.replace(cfg.ppo, steps=steps, max_new_tokens=r.max_tokens, temperature=r.temperature)
    # the reward is given on the main process only (PPOTrainer): the others load no reward model
    use_orm = METHODS[method].reward == "orm" and is_main_process()
    orm = ModelReward(s0.orm, cfg.ppo.rm_max_length, precision=cfg.ppo.precision) if use_orm else None
    reward = VerifierReward({user_turn(p): (p.problem_id, p.answer) for p in train_rows}, orm)
    trainer = PPOTrainer(ppo_cfg, model, reward, seed=seed)
    limit = ppo_cfg.max_prompt_tokens
    too_long = [p.problem_id for p in train_rows if len(trainer.encode_prompt(user_turn(p))) > limit]
    if too_long:
        raise DataError(f"{it.root}: problems {too_long[:3]} are longer than ppo.max_prompt_tokens")
    rows = trainer.train([user_turn(p) for p in train_rows], steps, it.ppo_log, Tracker.of(cfg))
    if trainer.accelerator.is_main_process:  # the reward is given (and the rollouts verified) there
        write_jsonl(it.candidates, reward.rows)
    lineage = Lineage(cfg.model, str(run.root), 0, model)
    data = {"problems": len(train_rows), "updates": len(rows), "reward": METHODS[method].reward}
    summary = {"optimizer_steps": trainer.optimizer_steps, "last_row": rows[-1] if rows else None}
    trainer.save_policy(it.model, model_card(lineage, "ppo", {"ppo": dataclasses.asdict(ppo_cfg)}, data, summary))
    correct = [x["correct"] for x in reward.rows]
    return {
        "processes": trainer.world,
        "updates": len(rows),
        "rollouts": len(correct),
        "rollouts_correct": sum(correct),
        "optimizer_steps": trainer.optimizer_steps,
        "first_reward_raw": rows[0]["reward_raw"] if rows else None,
        "last_reward_raw": rows[-1]["reward_raw"] if rows else None,
        "last_kl": rows[-1]["kl"] if rows else None,
    }


def round_data(cfg: RunConfig, run: RunPaths, method: str, k: int) -> dict:
    """What stage train of round k of `method` trains on, written by the parent before the training child
    starts (so that N processes of it never write one file): the SFT examples (sft_data.jsonl) or the DPO pairs
    (pairs.jsonl, pairs/) that the method's table row makes. PPO samples while it trains: nothing."""
    train_rows, _ = problems(cfg.reason, cfg.seed)
    s0, it, m = starting_point(cfg, run, train_rows), round_paths(run, method, k), METHODS[method]
    data = RoundData(
        train_rows,
        rounds_candidates(run, method, k) if m.samples else [],
        s0.demonstrations,
        rounds_candidates(run, m.control_of, k) if m.control_of else [],
        cfg.pairs,
    )
    if m.examples is not None:
        return {"examples": write_jsonl(it.sft_data, m.examples(data))}
    assert m.pairs is not None, method
    return save_pairs(it, m.pairs(data))


def train_round(cfg: RunConfig, run: RunPaths, method: str, k: int) -> dict:
    """Stage train of round k of `method` (in the training child), from the run's files: PPO (which samples
    while it trains), SFT on `round_data`'s examples (expert iteration and its control from M0, RCRL from the
    start, continued expert iteration from the previous round's model), or DPO on its pairs."""
    train_rows, _ = problems(cfg.reason, cfg.seed)
    s0 = starting_point(cfg, run, train_rows)
    it, model, seed = round_paths(run, method, k), round_model(run, method, k, s0), round_seed(cfg.seed, k)
    m = METHODS[method]
    if m.trains == "ppo":
        return ppo_round(cfg, run, it, method, model, s0, train_rows, seed)
    if m.trains == "sft":
        origin = {"base": s0.base, "start": s0.start, "previous": model}[m.origin]
        sft_cfg = dataclasses.replace(cfg.sft, max_steps=-1, save_steps=0)
        return sft.train_sft(origin, read_jsonl(it.sft_data), sft_cfg, it.model, seed)
    dpo_cfg = dataclasses.replace(cfg.dpo, min_pairs=min(cfg.dpo.min_pairs, 4), save_steps=0)
    return dpo.run(dpo_cfg, model, None, it, seed)


def candidate_files(run: RunPaths, method: str, k: int) -> list[Path]:
    """`method`'s candidates.jsonl of rounds 1..k (`sft_solutions` counts expert iteration's)."""
    return [round_paths(run, method, j).candidates for j in range(1, k + 1)]


def rounds_candidates(run: RunPaths, method: str, k: int) -> list[list[dict]]:
    """The samples of `candidate_files`, one list per round."""
    return [read_jsonl(path) for path in candidate_files(run, method, k)]


def train_init(cfg: RunConfig, run: RunPaths) -> dict:
    """Stage sft of init: M0 fine-tuned on the training problems' worked solutions (init/sft_data.jsonl)."""
    init, base = IterPaths(run.reason / "init"), base_model(cfg)
    examples = read_jsonl(init.sft_data)
    init_cfg = dataclasses.replace(cfg.sft, max_steps=-1, save_steps=0)  # the recipe expert iteration repeats
    lineage = Lineage(cfg.model, str(run.root), 0, base)
    trained = sft.train_sft(base, examples, init_cfg, init.model, cfg.seed, lineage=lineage)
    return {"examples": len(examples), **trained}


def orm_data(cfg: RunConfig, run: RunPaths) -> dict:
    """The outcome reward model's pairs (`orm_pairs` of the start's verified answers), written by the parent
    before the training child starts; an ORM of earlier answers is removed first, so it cannot outlive a
    re-run that trains none."""
    train_rows, _ = problems(cfg.reason, cfg.seed)
    orm = IterPaths(run.reason / "init" / "orm")
    if orm.model.exists():
        shutil.rmtree(orm.model)
    return save_pairs(orm, orm_pairs(train_rows, read_jsonl(orm.candidates)))


def train_orm(cfg: RunConfig, run: RunPaths) -> dict:
    """Stage orm (in the training child): RewardTrainer on the pairs `orm_data` wrote."""
    train_rows, _ = problems(cfg.reason, cfg.seed)
    s0 = starting_point(cfg, run, train_rows)
    orm = IterPaths(run.reason / "init" / "orm")
    lineage = Lineage(cfg.model, str(run.root), 0, s0.start)
    return train_reward_model(
        cfg.ppo, s0.start, orm.pairs_dataset, orm.model, orm.reward_model_log, cfg.seed, Tracker.of(cfg), lineage
    )


def in_child(cfg: RunConfig, run: RunPaths, job: list[str], inline: Callable[[], dict]) -> dict:
    """A training job in a child process (`python -m selfreward.baselines.reason --job ...`, as the loop trains
    with `launch.separate_process`), else `inline`. Measured: expert iteration's SFT took 52 s per step in the
    process that had run vLLM and trained the ORM, 7.3 s in a fresh one."""
    return train(cfg, run, "selfreward.baselines.reason", job, inline)


def run_round(
    cfg: RunConfig,
    run: RunPaths,
    method: str,
    k: int,
    s0: Start,
    train_rows: list[Problem],
    test: list[Problem],
    stages: StageRunner,
) -> None:
    """One round of `method`: sample k answers per train problem with round k-1's model, train, measure (PPO
    samples while it trains)."""
    it, model, seed = round_paths(run, method, k), round_model(run, method, k, s0), round_seed(cfg.seed, k)
    m = METHODS[method]
    settings = (sampling(cfg.reason), judging(cfg.judge, cfg.reason.judge_mode), engine_settings(cfg.engine))
    digest = model_digest(model)
    orm_digest = model_digest(s0.orm) if s0.orm is not None else None
    job = ["--job", "round", "--method", method, "--round", str(k)]

    def do_samples(engine: Engine) -> dict:
        rows = sample(engine(), cfg.reason, train_rows, cfg.reason.samples, seed, m.token)
        if m.judged:
            judge_samples(engine(), cfg.judge, cfg.reason.judge_mode, train_rows, rows, seed)
        write_jsonl(it.candidates, rows)
        return {"samples": len(rows), "correct": sum(s["correct"] for s in rows)}

    def do_train() -> dict:
        data = round_data(cfg, run, method, k)
        if m.trains == "sft" and not data["examples"]:
            copy_model(model, it.model)
            return {**data, "skipped": True}
        return {**data, **in_child(cfg, run, job, lambda: train_round(cfg, run, method, k))}

    if m.trains == "ppo":
        stages.run(
            "train",
            (sampling(cfg.reason), cfg.ppo, method),
            lambda: in_child(ddp_launch(cfg), run, job, lambda: train_round(cfg, run, method, k)),
            inputs=lambda: (digest, orm_digest if m.reward == "orm" else None),
        )
    elif not m.samples:
        stages.run(
            "train",
            (cfg.sft, method),
            do_train,
            inputs=lambda: (
                model_digest(s0.base),
                file_digest(IterPaths(run.reason / "init").sft_data),
                [file_digest(path) for path in candidate_files(run, m.control_of or method, k)],
            ),
        )
    else:
        with Engine(cfg, model) as engine:
            stages.run("samples", settings, lambda: do_samples(engine), inputs=lambda: digest)
        stages.run(
            "train",
            (cfg.sft, cfg.dpo, method),
            do_train,
            inputs=lambda: (
                digest,
                model_digest(s0.start),
                model_digest(s0.base),
                [file_digest(path) for path in candidate_files(run, method, k)],
            ),
        )
    stages.run(
        "eval",
        settings,
        lambda: measure(cfg, it.model, test, m.token, seed, it.root / "eval.jsonl", s0.orm),
        inputs=lambda: (model_digest(it.model), orm_digest),
    )


def measure(
    cfg: RunConfig, model: str | Path, test: list[Problem], token: str, seed: int, out: Path, orm: Path | None
) -> dict:
    """Stage eval: `evaluate` with an engine on `model`, closed when it is done."""
    with Engine(cfg, str(model)) as engine:
        return evaluate(engine, cfg, test, token, seed, out, orm)


def greedy_correct(eval_file: Path) -> dict[str, float]:
    """Per test problem, 1.0 if its greedy answer in `eval_file` (a stage's eval.jsonl) is correct."""
    return {r["problem_id"]: float(r["correct"]) for r in read_jsonl(eval_file) if r["greedy"]}


def reason(cfg: RunConfig, force: bool = False) -> RunPaths:
    """Every method of `reason.methods` from the same start; one table in reason/reason.json."""
    unknown = [m for m in cfg.reason.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"reason.methods: unknown {unknown}; choose from {list(METHODS)}")
    ms = cfg.reason.methods
    for name in ms:
        m = METHODS[name]
        if m.reward == "orm" and not cfg.reason.orm:
            raise ConfigError(f"reason.methods: {name} needs the outcome reward model (reason.orm: true)")
        if m.control_of and (m.control_of not in ms or ms.index(m.control_of) > ms.index(name)):
            raise ConfigError(f"reason.methods: {name} is {m.control_of}'s control; list {m.control_of} before it")
        if m.control_of and not cfg.reason.sft_init:
            raise ConfigError(f"reason.methods: {name} trains on the worked solutions; it needs reason.sft_init: true")
    processes = cfg.launch.num_processes
    if cfg.reason.orm:
        check_rm_batch(cfg.ppo, processes)
    ppo = any(METHODS[m].trains == "ppo" for m in cfg.reason.methods)
    if ppo:
        check_shares(cfg.ppo, processes)
    budget = cfg.reason.train_problems * cfg.reason.samples
    if ppo and budget % cfg.ppo.rollout_batch_size:
        raise ConfigError(
            f"ppo.rollout_batch_size={cfg.ppo.rollout_batch_size} does not divide reason.train_problems x "
            f"reason.samples = {budget}: PPO would not sample each problem reason.samples times"
        )
    run = open_run(cfg)
    wall = time.perf_counter()
    train_rows, test = problems(cfg.reason, cfg.seed)
    write_problem_file(run.reason / "problems_train.jsonl", train_rows)
    write_problem_file(run.reason / "problems_test.jsonl", test)
    key = problems_key(train_rows, test)
    chain = RunChain(cfg, force, start=key)
    init = IterPaths(run.reason / "init")
    orm = IterPaths(init.root / "orm")
    base = base_model(cfg)
    s0 = starting_point(cfg, run, train_rows)
    with chain.iteration(init, 0, INIT_STAGES) as stages:
        if cfg.reason.sft_init:
            stages.run(
                "sft_data",
                [p.problem_id for p in train_rows],
                lambda: {"examples": write_jsonl(init.sft_data, s0.demonstrations)},
            )
            stages.run(
                "sft",
                cfg.sft,
                lambda: in_child(cfg, run, ["--job", "init"], lambda: train_init(cfg, run)),
                inputs=lambda: (model_digest(base), file_digest(init.sft_data)),
            )
        if cfg.reason.orm:
            seed = cfg.seed * 1000 + 690

            def do_orm_samples() -> dict:
                with Engine(cfg, s0.start) as engine:
                    rows = sample(engine(), cfg.reason, train_rows, cfg.reason.samples, seed)
                write_jsonl(orm.candidates, rows)
                return {"samples": len(rows), "correct": sum(s["correct"] for s in rows)}

            settings = (sampling(cfg.reason), engine_settings(cfg.engine))
            stages.run("orm_samples", settings, do_orm_samples, inputs=lambda: model_digest(s0.start))

            def do_orm() -> dict:
                counts = orm_data(cfg, run)
                if not counts["pairs"]:
                    log.warning(
                        "reason: the start's answers gave no (correct, incorrect) pair; no outcome reward model"
                    )
                    return {**counts, "skipped": True}
                return {**counts, **in_child(cfg, run, ["--job", "orm"], lambda: train_orm(cfg, run))}

            stages.run(
                "orm",
                reward_model_settings(cfg.ppo),
                do_orm,
                inputs=lambda: (model_digest(s0.start), file_digest(orm.candidates)),
            )
        s0 = starting_point(cfg, run, train_rows)  # with the ORM the stage above trained
        stages.run(
            "eval",
            (sampling(cfg.reason), judging(cfg.judge, cfg.reason.judge_mode), engine_settings(cfg.engine)),
            lambda: measure(cfg, s0.start, test, "", cfg.seed, init.root / "eval.jsonl", s0.orm),
            inputs=lambda: (model_digest(s0.start), model_digest(s0.orm) if s0.orm else None),
        )
    before = greedy_correct(init.root / "eval.jsonl")
    rows = [table_row("start", 0, init, None)]
    tracker = Tracker.of(cfg)
    for method in cfg.reason.methods:
        method_chain = RunChain(cfg, force, start=key)
        for k in range(1, cfg.reason.rounds + 1):
            it = round_paths(run, method, k)
            log.info("reason: %s round %d/%d", method, k, cfg.reason.rounds)
            with method_chain.iteration(it, k, stages_of(method)) as stages:
                run_round(cfg, run, method, k, s0, train_rows, test, stages)
            gain = metrics.paired_gain_with_ci(greedy_correct(it.root / "eval.jsonl"), before, seed=cfg.seed)
            row = table_row(method, k, it, gain)
            rows.append(row)
            tracker.log(f"reason/{method}", flatten(row), k)
    write_json(
        run.reason / "reason.json", {"rows": rows, "wall_s_this_invocation": round(time.perf_counter() - wall, 1)}
    )
    return run


def main() -> None:
    """Run one training job of `selfreward reason` alone, in its child process: `init` (the SFT start),
    `orm` (the outcome reward model) or `round` (stage train of --method's --round)."""
    parser = stage_parser(main.__doc__)
    parser.add_argument("--job", choices=("init", "orm", "round"), required=True)
    parser.add_argument("--method", choices=list(METHODS))
    parser.add_argument("--round", type=int, default=1)
    args = parser.parse_args()
    if args.job == "round" and args.method is None:
        parser.error("--job round needs --method")
    cfg, run = stage_setup(args)
    jobs = {
        "init": lambda: train_init(cfg, run),
        "orm": lambda: train_orm(cfg, run),
        "round": lambda: train_round(cfg, run, args.method, args.round),
    }
    stage_main(args, jobs[args.job])


def table_row(method: str, k: int, it: IterPaths, gain: dict | None) -> dict[str, Any]:
    """A row of reason.json: the eval stage's metrics of `it`, maj@1's gain over the start beside maj@1, and what
    the whole round (or the init) cost: the wall time of all its stages, summed, and the largest peak memory
    of any of them (children included), beside the eval stage's own `wall_s` / `peak_rss_gib`."""
    stages = read_json(it.metrics)["stages"]
    measured = stages["eval"]
    done = [v for v in stages.values() if isinstance(v, dict)]
    return {
        "method": method,
        "round": k,
        "maj@1": measured["maj@1"],
        "maj@1_gain": gain,
        **measured,
        "round_wall_s": round(sum(v.get("wall_s") or 0.0 for v in done), 1),
        "round_peak_rss_gib": max((v.get("peak_rss_gib") or 0.0 for v in done), default=0.0),
    }


if __name__ == "__main__":
    main()
