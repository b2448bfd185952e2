"""The judge stage at the loop's own shapes: each judge mode on a run's real candidates, with and without
vLLM's prefix cache.

Reads  a run's iter_K/prompts.jsonl and candidates.jsonl, and the model that judged them
       (iter_{K-1}/model; `--judge` another folder).
Writes benchmarks/results/judge_loop.json (with the CPU's flags) and prints a table.

For each mode (`direct`, `probabilities`, `sampled`, with the config's K, max_tokens and temperature)
and each prefix-cache setting, the loop's own judge stage (`judge.run`) scores the first `--limit` candidates
(whole prompts: all of a prompt's candidates or none), and the loop's own `make_pairs` turns the scores
into pairs with the config's pairing rules. A row: seconds per 100 candidates, unscored candidates,
pairs kept and why the others were dropped, the engine's prefix-cache hit rate, and how each mode's
pairs agree with the `sampled` ones (same chosen/rejected direction on the prompts both kept).
Accuracy against human labels is `bench_judge_modes.py`; this is the cost and yield on the loop's data.

    make bench-judge-loop RUN=iterations/default BENCH_ARGS="--iteration 2 --limit 128"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from machine import cpu_flags

from selfreward.artifacts import RunPaths, read_jsonl, write_json, write_jsonl
from selfreward.config import RunConfig, load_config
from selfreward.generation import VLLMGenerator
from selfreward.loop import judge
from selfreward.loop.pairs import make_pairs

OUT = Path(__file__).resolve().parent / "results" / "judge_loop.json"


def first_prompts(candidates: list[dict], limit: int) -> list[dict]:
    """The first candidates up to `limit`, whole prompts only (pairs need all of a prompt's candidates)."""
    kept: list[dict] = []
    seen: set[str] = set()
    for c in candidates:
        if c["prompt_id"] not in seen:
            if len(kept) >= limit:
                break
            seen.add(c["prompt_id"])
        kept.append(c)
    return kept


def one_mode(gen: VLLMGenerator, cfg: RunConfig, mode: str, prompts: list[dict], candidates: list[dict]) -> dict:
    """The loop's own judge stage (`judge.run`) on a scratch iteration holding these prompts and candidates,
    then the loop's own `make_pairs` on what it wrote."""
    judge_cfg = dataclasses.replace(cfg.judge, mode=mode)
    with tempfile.TemporaryDirectory() as tmp:
        it = RunPaths(Path(tmp)).iteration(1)
        it.root.mkdir(parents=True)
        write_jsonl(it.prompts, prompts)
        write_jsonl(it.candidates, candidates)
        start = time.perf_counter()
        metrics = judge.run(gen, judge_cfg, it, seed=cfg.seed)
        seconds = time.perf_counter() - start
        pairs, dropped = make_pairs(prompts, candidates, read_jsonl(it.judgements), cfg.pairs)
    return {
        "mode": mode,
        "samples_per_candidate": 1 if mode == "direct" else judge_cfg.samples,
        "candidates": len(candidates),
        "prompts": len(prompts),
        "seconds": round(seconds, 1),
        "seconds_per_100_candidates": round(100 * seconds / len(candidates), 1),
        "unscored_candidates": metrics["unscored_candidates"],
        "pairs": len(pairs),
        "dropped": dropped,
        "prefix_cache": metrics["prefix_cache"],
        "directions": {p.prompt_id: (p.chosen_id, p.rejected_id) for p in pairs},
    }


def agreement(rows: list[dict]) -> None:
    """Each row's pairs against the `sampled` row of the same cache setting: on the prompts both kept, how
    many are not reversed (this mode's chosen is not `sampled`'s rejected, nor its rejected `sampled`'s
    chosen)."""
    for row in rows:
        same_cache = [r for r in rows if r["prefix_cache_on"] == row["prefix_cache_on"]]
        ref = next((r for r in same_cache if r["mode"] == "sampled"), None)
        if ref is None or ref is row:
            continue
        both = set(row["directions"]) & set(ref["directions"])
        same = 0
        for pid in both:
            (c, r), (rc, rr) = row["directions"][pid], ref["directions"][pid]
            same += not (c == rr or r == rc)  # reversed when one's chosen is the other's rejected
        row["vs_sampled"] = {"prompts_both_kept": len(both), "not_reversed": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--run", default="iterations/default", help="a run whose iter_K has candidates")
    parser.add_argument("--iteration", type=int, default=1)
    parser.add_argument("--judge", default="", help="the judge model folder (default: iter_{K-1}/model)")
    parser.add_argument("--limit", type=int, default=128, help="candidates (whole prompts)")
    parser.add_argument("--modes", default="direct,sampled,probabilities")
    parser.add_argument("--cache", default="on,off", help="prefix-cache settings to measure")
    args = parser.parse_args()
    cfg = load_config(args.config)
    run = RunPaths(Path(args.run))
    it = run.iteration(args.iteration)
    judge_model = args.judge or str(run.iteration(args.iteration - 1).model)
    candidates = first_prompts(read_jsonl(it.candidates), args.limit)
    used = {c["prompt_id"] for c in candidates}
    prompts = [p for p in read_jsonl(it.prompts) if p["prompt_id"] in used]
    rows = []
    for cache in args.cache.split(","):
        start = time.perf_counter()
        gen = VLLMGenerator(judge_model, cfg.engine, Path(cfg.cache_dir), seed=cfg.seed, prefix_caching=cache == "on")
        startup = round(time.perf_counter() - start, 1)
        try:
            for mode in args.modes.split(","):
                row = {"prefix_cache_on": cache == "on", "startup_s": startup, "dtype": gen.dtype}
                row.update(one_mode(gen, cfg, mode, prompts, candidates))
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "directions"}), flush=True)
        finally:
            gen.close()
    agreement(rows)
    report = {
        "run": args.run,
        "iteration": args.iteration,
        "judge_model": judge_model,
        "judge": dataclasses.asdict(cfg.judge),
        "rows": [{k: v for k, v in r.items() if k != "directions"} for r in rows],
        "cpu": cpu_flags(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(OUT, report)
    print(f"\n{'mode':<15}{'cache':>6}{'s/100':>8}{'unscored':>10}{'pairs':>7}{'hit rate':>10}{'vs sampled':>12}")
    for r in report["rows"]:
        hit = (r["prefix_cache"] or {}).get("hit_rate")
        vs = r.get("vs_sampled")
        vs_text = f"{vs['not_reversed']}/{vs['prompts_both_kept']}" if vs else "-"
        print(
            f"{r['mode']:<15}{'on' if r['prefix_cache_on'] else 'off':>6}{r['seconds_per_100_candidates']:>8}"
            f"{r['unscored_candidates']:>10}{r['pairs']:>7}{hit if hit is not None else '-':>10}{vs_text:>12}"
        )
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
