"""Self-rewarding DPO vs the baselines, from the same M0 on the same prompts (`selfreward compare-methods`).

Reads  the run's finished methods: the DPO loop (iter_0 seed SFT when present, iter_1..N: the last
       iteration's model), PPO (ppo/model, ppo/metrics.json) and expert iteration
       (expert_iter/metrics.json, its rounds); a method that has not been run is left out
Writes iterations/<run>/methods.json: one row per method (replaced on re-run), also shown by the report

Per method: win / tie / loss and win rate of its final model against M0 on the held-out prompts
(`compare.head_to_head`, judged in both positions by M0 so that every method faces the same judge),
the length-matched win rate, the mean answer length in characters, optionally the judge accuracy of its
final model on a human-label file (`judge_eval.evaluate`), and what it cost: wall time and peak memory
summed / maxed over its stages as the stages recorded them, and its generation budget — answers sampled
(candidates or PPO rollouts) and judge calls (judge samples; PPO with `reward: judge` makes K per
rollout answer). The seed SFT (iter_0) is the common start of the DPO loop and expert iteration, so its
cost is reported once, in its own row.
"""

from __future__ import annotations

import logging
from pathlib import Path

from selfreward.artifacts import IterPaths, RunPaths, read_json, slug, write_json
from selfreward.config import RunConfig
from selfreward.evaluation import compare, judge_eval
from selfreward.inputs import load_labels

log = logging.getLogger(__name__)


def stage_costs(folders: list[IterPaths]) -> dict:
    """Wall time, peak memory and generation budget of a method made of iteration-like folders."""
    wall, peak, answers, judge_calls = 0.0, 0.0, 0, 0
    for it in folders:
        metrics = read_json(it.metrics) if it.metrics.exists() else {}
        stages = metrics.get("stages", {})
        wall += sum(s.get("wall_s", 0.0) for s in stages.values())
        peak = max([peak, *(s.get("peak_rss_gib", 0.0) for s in stages.values())])
        if it.candidates.exists():
            answers += sum(1 for line in it.candidates.open() if line.strip())
        judge_calls += stages.get("judgements", {}).get("judge_samples", 0)
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(peak, 2), "answers": answers, "judge_calls": judge_calls}


def methods_of_run(cfg: RunConfig, run: RunPaths) -> list[tuple[str, str, dict]]:
    """(method, final model folder, costs) of every finished method of the run."""
    found = []
    sft = run.iteration(0)
    if (sft.model / "config.json").exists():
        found.append(("seed SFT (M1)", str(sft.model), stage_costs([sft])))
    iters = [k for k in run.iterations() if (run.iteration(k).model / "config.json").exists()]
    if iters:
        model = str(run.iteration(iters[-1]).model)
        found.append((f"self-rewarding DPO ({len(iters)} it.)", model, stage_costs([run.iteration(k) for k in iters])))
    if (run.ppo.model / "config.json").exists():
        m = read_json(run.ppo.metrics)
        judge_calls = m.get("responses", 0) * cfg.judge.samples if m.get("reward") == "judge" else 0
        costs = {"wall_s": m.get("wall_s"), "peak_rss_gib": m.get("peak_rss_gib"), "answers": m.get("responses", 0)}
        found.append((f"PPO ({m.get('steps')} updates)", str(run.ppo.model), {**costs, "judge_calls": judge_calls}))
    if run.expert_iter_metrics.exists():
        m = read_json(run.expert_iter_metrics)
        rounds = [run.expert_round(k) for k in range(1, len(m.get("rounds", [])) + 1)]
        if (Path(m["final_model"]) / "config.json").exists() and rounds:
            found.append((f"expert iteration ({len(rounds)} rounds)", m["final_model"], stage_costs(rounds)))
    return found


def compare_methods(cfg: RunConfig, run: RunPaths, labels: str | None = None, limit: int | None = None) -> list[dict]:
    """One row per finished method: win rate vs M0 (judged by M0), lengths, judge accuracy, costs."""
    base_label, base = compare.run_models(cfg, run)[0]
    items = load_labels(labels)[:limit] if labels else None
    rows = []
    for method, model, costs in methods_of_run(cfg, run):
        log.info("compare-methods: %s (%s)", method, model)
        label = slug(method.split(" (")[0])
        h2h = compare.head_to_head(cfg, run.compare_dir, (label, model), (base_label, base), base)
        row = {
            "method": method,
            "model": model,
            "win": h2h["win"],
            "tie": h2h["tie"],
            "loss": h2h["loss"],
            "win_rate_vs_M0": h2h["win_rate"],
            "length_matched_win_rate": h2h["length_matched_win_rate"],
            "n_length_matched": h2h["n_length_matched"],
            "rubric_win_rate_vs_M0": h2h["rubric_win_rate"],
            "rubric_length_matched_win_rate": h2h["rubric_length_matched_win_rate"],
            "mean_chars": h2h["mean_chars_a"],
            "mean_chars_M0": h2h["mean_chars_b"],
        }
        if items is not None and labels is not None:
            name = labels if limit is None else f"{labels}[:{limit}]"
            ev = judge_eval.evaluate(cfg, label, model, name, items, run)
            row.update(judge_accuracy=ev["accuracy"], judge_ci_low=ev["ci_low"], judge_ci_high=ev["ci_high"])
        rows.append({**row, **costs})
        compare.save_rows(run.methods, rows[-1:], ("method",))
    if not rows:
        log.warning("compare-methods: no finished method in %s (run iterate, ppo or expert-iter first)", run.root)
    else:
        # The table is this run's methods as they are now: rows of an earlier budget (a method retrained with
        # more steps or rounds) are dropped. The per-row saves above keep what was done if a run stops early.
        write_json(run.methods, {"rows": rows})
    return rows
