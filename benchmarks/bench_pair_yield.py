"""Less generation, the same pairs? A run's judged iterations replayed with fewer candidates per prompt and
fewer judge samples per candidate, through the loop's own pairing rules. No model runs (seconds).

Reads  iterations/<run>/config.yaml and, for every judged iteration K, iter_K/prompts.jsonl,
       candidates.jsonl, judgements.jsonl (and the tokenizer of iter_{K-1}/model for the pairs stage's
       identical-after-truncation check)
Writes benchmarks/results/pair_yield.json and prints a table.

A run that drew n candidates per prompt and K judge samples per candidate holds, in each prompt's first n'
candidates and each candidate's first K' samples, what a run with n' and K' would have drawn (the same
distribution; with per-request seeds, `engine.reproducible`, the same text: vLLM seeds a request's j-th sample
seed + j). Each replayed candidate is scored as the judge stage scores it (the mean of its parsed samples
when at least `judge.min_parsed` of K' parsed) and `make_pairs` pairs it with the run's rules. A row, per
(n', K') and iteration: the candidates and judge samples generated (what the generation stages cost scales
with), pairs kept and why the others were dropped, pairs that rest on a score from a single parsed sample
(whose noise band is then 0: no guard against the judge's noise), pairs equal to the run's own, and pairs
the run's full scores reverse. The full (n, K) row must reproduce the run's pairs.jsonl, or the script stops.

    make bench-pair-yield RUN=iterations/default
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from machine import cpu_flags

from selfreward.artifacts import RunPaths, read_jsonl, write_json
from selfreward.config import JudgeConfig, PairsConfig, load_config
from selfreward.loop.judge import candidate_score, min_parsed
from selfreward.loop.pairs import make_pairs, truncation_check

OUT = Path(__file__).resolve().parent / "results" / "pair_yield.json"


def candidate_index(candidate_id: str) -> int:
    """j of a candidate id `{prompt_id}-c{j}` (responses stage)."""
    return int(candidate_id.rsplit("-c", 1)[1])


def rescore(judgement: dict, k: int, need: int) -> dict:
    """The judgement as the judge stage would have written it from the first `k` samples."""
    samples = judgement["samples"][:k]
    score, parsed = candidate_score([s["score"] for s in samples], need)
    return {**judgement, "samples": samples, "score": score, "num_parsed": parsed}


def replay(
    prompts: list[dict],
    candidates: list[dict],
    judgements: list[dict],
    pairs_cfg: PairsConfig,
    judge_cfg: JudgeConfig,
    n: int,
    k: int,
    run_pairs: dict[str, tuple[str, str]],
    identical=lambda p, a, b: a == b,  # noqa: ANN001 - make_pairs' `identical`
) -> dict:
    """Pairs from each prompt's first `n` candidates judged by their first `k` samples, against the run's own
    pairs (`run_pairs`: prompt id -> chosen and rejected candidate ids) and scores."""
    kept = [c for c in candidates if candidate_index(c["candidate_id"]) < n]
    need = min_parsed(dataclasses.replace(judge_cfg, samples=k))
    rescored = {j["candidate_id"]: rescore(j, k, need) for j in judgements}
    pairs, dropped = make_pairs(prompts, kept, list(rescored.values()), pairs_cfg, identical)
    full_score = {j["candidate_id"]: j["score"] for j in judgements}
    one_sample = same = reversed_ = 0
    for p in pairs:
        one_sample += min(rescored[p.chosen_id]["num_parsed"], rescored[p.rejected_id]["num_parsed"]) < 2
        same += run_pairs.get(p.prompt_id) == (p.chosen_id, p.rejected_id)
        chosen, rejected = full_score[p.chosen_id], full_score[p.rejected_id]
        reversed_ += chosen is not None and rejected is not None and chosen < rejected
    return {
        "n": n,
        "k": k,
        "candidates": len(kept),
        "judge_samples": len(kept) * k,
        "candidate_tokens": sum(c["num_tokens"] for c in kept),
        "unscored_candidates": sum(rescored[c["candidate_id"]]["score"] is None for c in kept),
        "pairs": len(pairs),
        "dropped": dropped,
        "pairs_on_a_one_sample_score": one_sample,
        "pairs_equal_to_the_runs": same,
        "pairs_reversed_by_the_runs_scores": reversed_,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="iterations/default", help="a run with judged iterations")
    parser.add_argument("--n", default="", help="candidates per prompt to replay, e.g. 4,3,2 (default: n down to 2)")
    parser.add_argument("--k", default="", help="judge samples to replay, e.g. 3,2,1 (default: K down to 1)")
    args = parser.parse_args()
    run = RunPaths(Path(args.run))
    cfg = load_config(run.config)
    ns = [int(x) for x in args.n.split(",")] if args.n else list(range(cfg.responses.n, 1, -1))
    ks = [int(x) for x in args.k.split(",")] if args.k else list(range(cfg.judge.samples, 0, -1))
    if max(ns) > cfg.responses.n or max(ks) > cfg.judge.samples:
        raise SystemExit(f"{run.config}: the run drew n={cfg.responses.n}, K={cfg.judge.samples}; cannot replay more")
    from transformers import AutoTokenizer

    rows = []
    for k_iter in run.iterations():
        it = run.iteration(k_iter)
        if not it.judgements.exists() or not it.pairs.exists():
            continue
        prompts, candidates = read_jsonl(it.prompts), read_jsonl(it.candidates)
        judgements = read_jsonl(it.judgements)
        run_pairs = {p["prompt_id"]: (p["chosen_id"], p["rejected_id"]) for p in read_jsonl(it.pairs)}
        tokenizer = AutoTokenizer.from_pretrained(str(run.iteration(k_iter - 1).model))
        identical = truncation_check(tokenizer, cfg.dpo.max_length)
        for n in ns:
            for k in ks:
                row = {"iteration": k_iter}
                row.update(replay(prompts, candidates, judgements, cfg.pairs, cfg.judge, n, k, run_pairs, identical))
                full = (n, k) == (cfg.responses.n, cfg.judge.samples)
                if full and not row["pairs"] == row["pairs_equal_to_the_runs"] == len(run_pairs):
                    raise SystemExit(f"{it.pairs}: the replay of the run's own n and K does not reproduce its pairs")
                rows.append(row)
    if not rows:
        raise SystemExit(f"{args.run}: no iteration with judgements.jsonl and pairs.jsonl")
    write_json(
        OUT,
        {
            "run": args.run,
            "responses_n": cfg.responses.n,
            "judge": dataclasses.asdict(cfg.judge),
            "pairs_rules": dataclasses.asdict(cfg.pairs),
            "rows": rows,
            "cpu": cpu_flags(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    header = ("iter", 4), ("n", 3), ("K", 3), ("samples", 9), ("unscored", 10), ("pairs", 7), ("1-sample", 10)
    print("".join(f"{name:>{width}}" for name, width in header) + f"{'same':>6}{'rev':>5}  dropped")
    for r in rows:
        print(
            f"{r['iteration']:>4}{r['n']:>3}{r['k']:>3}{r['judge_samples']:>9}{r['unscored_candidates']:>10}"
            f"{r['pairs']:>7}{r['pairs_on_a_one_sample_score']:>10}{r['pairs_equal_to_the_runs']:>6}"
            f"{r['pairs_reversed_by_the_runs_scores']:>5}  {json.dumps(r['dropped'])}"
        )
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
