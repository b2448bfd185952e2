"""The `selfreward` command (also `python -m selfreward`).

selfreward iterate --config configs/default.yaml --iterations 3 [--force] [--no-reuse] [key.sub=value ...]
selfreward config --config configs/tiny.yaml judge.samples=2      # print the resolved config
selfreward convert-model                                          # embedded GGUF -> safetensors, once
selfreward inspect iterations/default [--iter 2 --show 5 --sort margin --where 'margin>=2']
selfreward report iterations/default                              # -> iterations/default/report.html
selfreward judge-eval --model smollm2-135m-instruct --labels FILE # judge vs human labels (or --run DIR)
selfreward judge-robustness --run iterations/default --iteration 1 # does flattery raise the judge's score?
selfreward compare --run iterations/default                       # M_t vs M0 win rates (or --model/--model-b)
selfreward evaluate iterations/default [--prompts input_data.jsonl] # every model on checkable instructions
selfreward compare-methods --run iterations/default               # DPO loop vs PPO vs expert iteration
selfreward eft build --labels FILE [--model M] [--out FILE]       # EFT data from judgements that agree with humans
selfreward expert-iter --config configs/default.yaml --rounds 2    # baseline: SFT on the best judged answers
selfreward ppo --config configs/default.yaml [--prompts F] [--pairs-from iterations/<run>/iter_K]  # PPO baseline
selfreward tiny-model [--out .cache/models/tiny]                  # the tiny random model of configs/tiny.yaml
selfreward reason --config configs/reason.yaml                   # EI / RCRL / PPO / DPO on problems with answers
selfreward status iterations/default                              # stages done / running / pending, with times
selfreward push iterations/default --iter 1 --what pairs --repo you/pairs [--private] [--dry-run DIR]

Each subcommand is one `cmd_<name>(args)`; every `errors.UserError` (config, data, a changed stage, a bad
--where, a run locked by another process) is caught once in `main`, printed as one line, exit code 2.
SIGTERM exits with code 143 through the normal unwinding (engines closed), and whatever child processes are
left (a vLLM engine core, its workers) are stopped before `main` returns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import psutil

from selfreward.artifacts import RunPaths
from selfreward.config import ConfigError, RunConfig, dump_yaml, load_config
from selfreward.errors import UserError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/default.yaml", help="YAML config (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. judge.samples=3")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="a model the config can name (embedded name, folder or hub id)")
    p.add_argument("--run", default=None, help="every model of this run folder; its config.yaml is used")
    p.add_argument("--config", default=None, help="YAML config (default: the run's config.yaml, else default.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. judge.samples=3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfreward",
        description="Self-rewarding language models: the model writes prompts, answers them, judges its own "
        "answers, and is trained with DPO on its best vs worst answers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("iterate", help="run or resume the self-rewarding loop (iterations/<run>/iter_K)")
    _add_config_args(p)
    p.add_argument(
        "--iterations",
        "-n",
        type=int,
        default=None,
        help="number of iterations (default: config; 0 = only the seed SFT, iter_0)",
    )
    p.add_argument("--force", action="store_true", help="redo finished stages whose config changed")
    p.add_argument(
        "--no-reuse", action="store_true", help="compute every stage, none from the store of finished stages"
    )
    p.set_defaults(func=cmd_iterate)

    p = sub.add_parser("plan", help="memory per device and time of every stage, by arithmetic, before anything runs")
    p.add_argument("config", nargs="?", default="configs/default.yaml", help="YAML config (default: %(default)s)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs per machine (default: this machine's; 0 = CPU)")
    p.add_argument("--gpu-memory", type=float, default=None, help="GiB per GPU, or of the machine with --gpus 0")
    p.add_argument("--efficiency", type=float, default=0.4, help="share of peak FLOP/s assumed (default 0.4)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. dpo.lora=true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("config", help="print the resolved config (defaults + YAML + overrides)")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("convert-model", help="convert the embedded SmolLM2-135M-Instruct GGUF once")
    _add_config_args(p)
    p.set_defaults(func=cmd_convert_model)

    p = sub.add_parser("inspect", help="print a run's stage funnel, scores, margins, lengths and example pairs")
    p.add_argument("run", help="run folder (iterations/<run>) or run name")
    p.add_argument("--iter", type=int, default=None, dest="iteration", help="one iteration in detail")
    p.add_argument("--show", type=int, default=3, help="example pairs to print with --iter (default: %(default)s)")
    p.add_argument("--sort", choices=["margin", "length"], default=None, help="example order (default: file order)")
    p.add_argument("--where", action="append", default=[], metavar="EXPR", help="filter pairs, e.g. margin>=2")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("report", help="write iterations/<run>/report.html: plots, tables and the pairs")
    p.add_argument("run", help="run folder (iterations/<run>) or run name")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("judge-eval", help="agreement of a model's judgements with human labels")
    _add_eval_args(p)
    p.add_argument("--labels", required=True, help="pairwise, ranked or hh-rlhf JSONL, or a hub dataset name[:split]")
    p.add_argument("--pairwise", action="store_true", help="also compare each pair directly, in both orders")
    p.add_argument("--limit", type=int, default=None, help="only the first N labelled items (a quick look)")
    p.set_defaults(func=cmd_judge_eval)

    p = sub.add_parser("judge-robustness", help="does a sentence addressed to the grader raise the judge's score?")
    _add_eval_args(p)
    p.add_argument("--labels", default=None, help="judge the responses of this label file (its first --limit items)")
    p.add_argument("--iteration", type=int, default=None, help="judge this iteration's lowest-scored candidates")
    p.add_argument("--limit", type=int, default=30, help="label items, or candidates (default: %(default)s)")
    p.add_argument(
        "--styles", default=None, help="comma-separated: praise,authority,verification,pleading,instruction (all)"
    )
    p.add_argument("--placements", default="end", help="comma-separated: end,start,middle (default: %(default)s)")
    p.add_argument(
        "--sentences", default="ours", choices=["ours", "unseen"], help="the sentence set (default: %(default)s)"
    )
    p.set_defaults(func=cmd_judge_robustness)

    p = sub.add_parser("compare", help="head-to-head win rates: M_t vs M0 for a run, or --model-a vs --model-b")
    _add_eval_args(p)
    p.add_argument("--model-b", default=None, help="the model --model is compared against")
    p.add_argument(
        "--judge", default=None, help="judge of every row (default: compare.judge, else the config's model M0)"
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("evaluate", help="every model of a run on checkable instructions: IFEval accuracies, gains")
    p.add_argument("run", help="the run folder, e.g. iterations/default")
    p.add_argument("--models", default=None, help="comma-separated labels (M0,M1,...) or model folders")
    p.add_argument("--prompts", default=None, help="constraint prompts in IFEval's format (default: eval.prompts)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts (default: eval.limit)")
    p.add_argument("--config", default=None, help="YAML config (default: the run's config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. eval.max_tokens=256")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("constraints", help="checkable-instruction prompt files: check one, or rewrite ours")
    constraints_sub = p.add_subparsers(dest="constraints_command", required=True, metavar="ACTION")
    p = constraints_sub.add_parser("check", help="read an IFEval-format file; print its instruction counts")
    p.add_argument("file")
    p.set_defaults(func=cmd_constraints_check)
    p = constraints_sub.add_parser("write-eval", help="rewrite prompts/eval/constraints.jsonl from the generator")
    p.set_defaults(func=cmd_constraints_write_eval)

    p = sub.add_parser("compare-methods", help="self-rewarding DPO vs PPO vs expert iteration: win rate vs M0, cost")
    p.add_argument("--run", default="iterations/default", help="run folder (default: %(default)s)")
    p.add_argument("--config", default=None, help="YAML config (default: the run's config.yaml)")
    p.add_argument("--labels", default=None, help="also the judge accuracy of each final model on this label file")
    p.add_argument("--limit", type=int, default=None, help="only the first N labelled items")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(func=cmd_compare_methods)

    p = sub.add_parser("eft", help="evaluation fine-tuning (EFT) data for the seed SFT")
    eft_sub = p.add_subparsers(dest="eft_command", required=True, metavar="EFT_COMMAND")
    p = eft_sub.add_parser(
        "build", help="judge human-ranked responses K times, keep the judgements that agree with the humans"
    )
    _add_config_args(p)
    p.add_argument("--labels", required=True, help="pairwise, ranked or hh-rlhf JSONL, or a hub dataset name[:split]")
    p.add_argument("--model", default=None, help="judge model (default: the config's model)")
    p.add_argument("--out", default=None, help="EFT JSONL to write (default: iterations/<run>/eft.jsonl)")
    p.add_argument("--samples", type=int, default=None, help="judgements per response (default: judge.samples)")
    p.set_defaults(func=cmd_eft_build)

    p = sub.add_parser(
        "expert-iter", help="expert-iteration baseline: SFT on the best judged answers (iterations/<run>/expert_iter)"
    )
    _add_config_args(p)
    p.add_argument("--rounds", type=int, default=None, help="rounds (default: expert_iter.rounds)")
    p.add_argument("--prompts", default=None, help="prompts JSONL (default: expert_iter.prompts, else iter_1's)")
    p.add_argument("--force", action="store_true", help="redo finished stages whose config changed")
    p.set_defaults(func=cmd_expert_iter)

    p = sub.add_parser(
        "ppo", help="PPO baseline (ICE-GRT style) with judge or reward-model rewards (iterations/<run>/ppo)"
    )
    _add_config_args(p)
    p.add_argument(
        "--prompts", default=None, help="prompts JSONL with `text` (default: the run's iter_1/prompts.jsonl)"
    )
    p.add_argument(
        "--pairs-from",
        default=None,
        help="ppo.reward=model: train the reward model on this iter_K's pairs/ (default: iter_1)",
    )
    p.add_argument("--force", action="store_true", help="train again even if a finished PPO run exists")
    p.set_defaults(func=cmd_ppo)

    p = sub.add_parser("reason", help="problems with checkable answers: EI, RCRL, PPO, DPO (verifier / judge pairs)")
    _add_config_args(p)
    p.add_argument("--force", action="store_true", help="redo finished stages whose config changed")
    p.set_defaults(func=cmd_reason)

    p = sub.add_parser("status", help="which stages of a run are done, running or pending, with their times")
    p.add_argument("run", help="run folder, e.g. iterations/default")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("push", help="an iteration's pairs or model to the hub (or --dry-run DIR: what would go)")
    p.add_argument("run", help="run folder, e.g. iterations/default")
    p.add_argument("--iter", dest="iteration", type=int, required=True, help="iteration K (iter_K/)")
    p.add_argument("--what", choices=["pairs", "model"], required=True)
    p.add_argument("--repo", required=True, help="hub repo id, e.g. you/selfreward-pairs-iter1")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", default=None, metavar="DIR", help="write what would be uploaded to DIR instead")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("tiny-model", help="build the tiny random test model that configs/tiny.yaml names (make smoke)")
    _add_config_args(p)
    p.add_argument("--out", default=".cache/models/tiny", help="model folder (default: %(default)s)")
    p.set_defaults(func=cmd_tiny_model)
    return parser


# --------------------------------------------------------------------------- one function per subcommand
# The stage modules are imported inside the commands: they pull in torch, transformers or vLLM, and
# `selfreward --help`, `inspect` and `report` should start without them.


def cmd_iterate(args: argparse.Namespace) -> None:
    from selfreward import planner as plan
    from selfreward.loop.pipeline import iterate

    cfg = load_config(args.config, [*args.overrides, *(["reuse=false"] if args.no_reuse else [])])
    if args.iterations is not None and args.iterations < 0:
        raise ConfigError(f"--iterations must be 0 or more, got {args.iterations}")
    plan.check(cfg, plan.this_machine())  # before any stage runs: a stage that cannot fit is refused here
    iterations = cfg.iterations if args.iterations is None else args.iterations
    from selfreward.evaluation.every_iteration import after_iteration

    iterate(cfg, iterations, force=args.force, argv=["selfreward", *args.argv], after_iteration=after_iteration(cfg))


def cmd_plan(args: argparse.Namespace) -> None:
    from selfreward import planner as plan

    cfg = load_config(args.config, args.overrides)
    here = plan.this_machine() if args.gpus is None or args.gpu_memory is None else None
    gpus = args.gpus if args.gpus is not None else here.gpus
    memory = args.gpu_memory if args.gpu_memory is not None else here.memory_gib
    if gpus < 0 or memory <= 0 or not 0 < args.efficiency <= 1:
        raise ConfigError("--gpus must be >= 0, --gpu-memory > 0 and --efficiency in (0, 1]")
    hw = plan.Hardware(gpus, memory, args.efficiency)
    shape, source, stages = plan.plan(cfg, hw)
    where = f"{gpus} GPU(s) of {memory:.0f} GiB" if gpus else f"a CPU machine with {memory:.0f} GiB"
    print(f"{cfg.model}: {shape.parameters / 1e9:.3f}B parameters (from {source}); {where}")
    rows = [
        {
            "stage": s.stage,
            "GiB per device": round(s.gib, 1),
            "fits": "yes" if s.fits else "NO",
            "hours (est.)": round(s.hours, 3),
            "made of (GiB)": ", ".join(f"{k} {v:.1f}" for k, v in s.parts.items() if v),
        }
        for s in stages
    ]
    print_rows(f"plan of {args.config} (efficiency {args.efficiency:.0%} of peak)", rows, list(rows[0]))
    plan.check(cfg, hw)


def cmd_config(args: argparse.Namespace) -> None:
    print(dump_yaml(load_config(args.config, args.overrides)), end="")


def cmd_convert_model(args: argparse.Namespace) -> None:
    from selfreward.models import resolve_model

    cfg = load_config(args.config, args.overrides)
    print(resolve_model(cfg.model, cfg.cache_dir))


def cmd_tiny_model(args: argparse.Namespace) -> None:
    from selfreward.models import build_tiny_model, convert_embedded

    cfg = load_config(args.config, args.overrides)
    print(build_tiny_model(Path(args.out), convert_embedded(Path(cfg.cache_dir))))


def cmd_inspect(args: argparse.Namespace) -> None:
    from selfreward.reporting.inspection import inspect_run

    inspect_run(args.run, args.iteration, args.show, args.sort, args.where)


def cmd_report(args: argparse.Namespace) -> None:
    from selfreward.reporting.report import write_report

    print(write_report(args.run))


def cmd_judge_eval(args: argparse.Namespace) -> None:
    from selfreward.evaluation import judge_eval

    cfg, run = _eval_config(args)
    models = judge_eval.models_to_evaluate(cfg, args.model, run if args.run else None)
    rows = judge_eval.judge_eval(cfg, args.labels, models, run, pairwise=args.pairwise, limit=args.limit)
    print_rows(f"judge vs human labels ({args.labels}) -> {run.judge_eval}", rows, JUDGE_EVAL_COLUMNS)


def cmd_judge_robustness(args: argparse.Namespace) -> None:
    from selfreward.evaluation import persuasion
    from selfreward.models import model_of_iteration, resolve_model

    if (args.labels is None) == (args.iteration is None):
        raise ConfigError("give exactly one of --labels and --iteration")
    if args.iteration is not None and not args.run:
        raise ConfigError("--iteration needs --run")
    if args.model is not None and args.run is not None:
        config = args.config or str(Path(args.run) / "config.yaml")
        cfg, run = load_config(config, args.overrides), RunPaths(Path(args.run))
    else:
        cfg, run = _eval_config(args)
    if args.iteration is not None:
        if args.iteration < 1 or not run.iteration(args.iteration).judgements.exists():
            raise UserError(f"{run.iteration(args.iteration).judgements}: no such file (an iteration that judged)")
        items, pairs = persuasion.items_from_iteration(run, args.iteration, args.limit)
        source = f"iter_{args.iteration}"
    else:
        items, pairs = persuasion.items_from_labels(args.labels, args.limit)
        source = args.labels
    if args.model is not None:
        judge = (args.model, resolve_model(args.model, cfg.cache_dir))
    elif args.iteration is not None:  # the model that judged that iteration
        judge = (f"M{args.iteration}", model_of_iteration(cfg, run, args.iteration - 1))
    else:
        k = max([0, *run.iterations()])
        judge = (f"M{k + 1}", model_of_iteration(cfg, run, k))
    styles = args.styles.split(",") if args.styles else None
    try:
        placements = args.placements.split(",")
        rows = persuasion.judge_robustness(cfg, run, judge, source, items, pairs, styles, placements, args.sentences)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print_rows(f"judge robustness ({source}) -> {run.root / 'judge_robustness.json'}", rows, ROBUSTNESS_COLUMNS)


def cmd_compare(args: argparse.Namespace) -> None:
    from selfreward.evaluation import compare
    from selfreward.models import resolve_model

    cfg, run = _eval_config(args)
    if args.run:
        rows = compare.compare_run(cfg, run, args.judge)
    else:
        if args.model_b is None:
            raise ConfigError("--model needs --model-b (the model it is compared against)")
        a = (args.model, resolve_model(args.model, cfg.cache_dir))
        b = (args.model_b, resolve_model(args.model_b, cfg.cache_dir))
        rows = [compare.head_to_head(cfg, run.compare_dir, a, b, compare.fixed_judge(cfg, args.judge))]
        compare.save_rows(run.compare, rows, ("a", "b", "judge"))
    print_rows(f"head-to-head on {cfg.compare.prompts} -> {run.compare}", rows, COMPARE_COLUMNS)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from selfreward.evaluation.instructions import evaluate, labelled_models

    run = RunPaths(Path(args.run))
    cfg = load_config(args.config or str(run.config), args.overrides)
    models = None
    if args.models:
        from selfreward.models import resolve_model

        known = dict(labelled_models(cfg, run))
        models = []
        for m in args.models.split(","):
            if m not in known and not Path(m).exists() and m.count("/") != 1:
                raise ConfigError(f"--models: {m} is not a model of {run.root} (M0, M1, ...), a folder or a hub id")
            models.append((m, known.get(m) or resolve_model(m, cfg.cache_dir)))
    if args.limit is not None and args.limit < 0:
        raise ConfigError(f"--limit must be 0 (all) or more, got {args.limit}")
    rows = evaluate(cfg, run, models, args.prompts, args.limit)
    print_rows(
        f"checkable instructions ({args.prompts or cfg.eval.prompts}) -> {run.evaluate}", flat_eval(rows), EVAL_COLUMNS
    )


def flat_eval(rows: list[dict]) -> list[dict]:
    """evaluate.json rows as table cells: value [low, high] for each measure and gain."""

    def cell(m: dict | None) -> str | None:
        return None if m is None else f"{m['value']:+.3f} [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}]"

    out = []
    for r in rows:
        flat = {k: r.get(k) for k in ("model", "prompts", "mean_tokens", "cut_off", "seconds")}
        for m in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"):
            flat[m] = f"{r[m]['value']:.3f} [{r[m]['ci_low']:.3f}, {r[m]['ci_high']:.3f}]"
        for base in ("M0", "M1"):
            flat[f"gain_vs_{base}"] = cell((r.get(f"gain_vs_{base}") or {}).get("prompt_strict"))
        out.append(flat)
    return out


EVAL_COLUMNS = [
    "model",
    "prompts",
    "prompt_strict",
    "prompt_loose",
    "instruction_strict",
    "instruction_loose",
    "gain_vs_M0",
    "gain_vs_M1",
    "mean_tokens",
    "cut_off",
    "seconds",
]


def cmd_constraints_check(args: argparse.Namespace) -> None:
    from collections import Counter

    from selfreward.constraints.data import load_constraint_prompts

    prompts = load_constraint_prompts(args.file)
    counts = Counter(i for p in prompts for i in p.instruction_id_list)
    print(f"{args.file}: {len(prompts)} prompts, {sum(counts.values())} instructions of {len(counts)} types")
    for instruction, n in sorted(counts.items()):
        print(f"  {instruction:48s} {n}")


def cmd_constraints_write_eval(args: argparse.Namespace) -> None:
    from selfreward.constraints.data import write_held_out

    print(f"wrote {write_held_out()}")


def cmd_compare_methods(args: argparse.Namespace) -> None:
    from selfreward.evaluation.methods import compare_methods

    cfg = load_config(args.config or str(Path(args.run) / "config.yaml"), args.overrides)
    run = RunPaths(Path(args.run))
    rows = compare_methods(cfg, run, args.labels, args.limit)
    print_rows(f"methods from the same M0 -> {run.methods}", rows, METHODS_COLUMNS)


def cmd_eft_build(args: argparse.Namespace) -> None:
    from selfreward.loop.eft import build_from_config

    cfg = load_config(args.config, args.overrides)
    print(json.dumps(build_from_config(cfg, args.labels, args.model, args.out, args.samples), indent=2))


def cmd_expert_iter(args: argparse.Namespace) -> None:
    from selfreward import planner
    from selfreward.baselines.expert_iter import expert_iterate

    cfg = load_config(args.config, args.overrides)
    planner.check(cfg, planner.this_machine(), "expert-iter")
    print(expert_iterate(cfg, args.rounds, args.prompts, force=args.force).expert_iter_metrics)


def cmd_ppo(args: argparse.Namespace) -> None:
    from selfreward import planner
    from selfreward.baselines.ppo import run_ppo

    cfg = load_config(args.config, args.overrides)
    planner.check(cfg, planner.this_machine(), "ppo")
    print(run_ppo(cfg, args.prompts, args.pairs_from, argv=["selfreward", *args.argv], force=args.force).root)


def cmd_reason(args: argparse.Namespace) -> None:
    import json

    from selfreward import planner
    from selfreward.baselines.reason import reason

    cfg = load_config(args.config, args.overrides)
    planner.check(cfg, planner.this_machine(), "reason")
    run = reason(cfg, force=args.force)
    rows = json.loads((run.reason / "reason.json").read_text())["rows"]
    k = cfg.reason.samples

    def v(r: dict, key: str, field: str = "value") -> str:
        x = (r.get(key) or {}).get(field)
        return "—" if x is None or x != x else f"{x:.3f}"

    head = f"{'method':<26} {'round':>5} {'maj@1':>21} {'gain [95% CI]':>24} {f'maj@{k}':>7} {f'pass@{k}':>7}"
    print(f"{head} {f'rerank@{k}':>9} {'orm rr':>7} {'judge acc':>9} {'orm acc':>7}")
    for r in rows:
        m1, g = r["maj@1"], r["maj@1_gain"]
        gain = f"{g['value']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]" if g else "—"
        print(
            f"{r['method']:<26} {r['round']:>5} {m1['value']:>6.3f} [{m1['ci_low']:.3f}, {m1['ci_high']:.3f}] "
            f"{gain:>24} {v(r, f'maj@{k}'):>7} {v(r, f'pass@{k}'):>7} {v(r, f'rerank@{k}'):>9} "
            f"{v(r, f'rerank@{k}_orm'):>7} {v(r, 'judge_accuracy', 'accuracy'):>9} "
            f"{v(r, 'orm_accuracy', 'accuracy'):>7}"
        )


def cmd_status(args: argparse.Namespace) -> None:
    import time

    from selfreward import progress
    from selfreward.artifacts import IterPaths
    from selfreward.baselines.expert_iter import ROUND_STAGES
    from selfreward.baselines.reason import INIT_STAGES, stages_of
    from selfreward.loop.pipeline import SEED_STAGES
    from selfreward.loop.pipeline import stages_of as iteration_stages
    from selfreward.runs import holder_command, lock_holder, run_status

    run = RunPaths(Path(args.run))
    if not run.root.is_dir():
        raise UserError(f"{run.root}: no such run folder")
    cfg = load_config(run.config) if run.config.exists() else RunConfig()

    def numbered(folder: Path, prefix: str) -> list[int]:
        return sorted(int(p.name[len(prefix) :]) for p in folder.glob(f"{prefix}*") if p.name[len(prefix) :].isdigit())

    found = numbered(run.root, "iter_")
    layout = [("iterate", run.iteration(0), SEED_STAGES)] if cfg.seed_sft or 0 in found else []
    last = max([cfg.iterations, *found])
    layout += [("iterate", run.iteration(k), iteration_stages(cfg, k)) for k in range(1, last + 1)]
    layout += [("expert-iter", run.expert_round(k), ROUND_STAGES) for k in numbered(run.expert_iter, "round_")]
    if run.reason.is_dir():
        layout.append(("reason", IterPaths(run.reason / "init"), INIT_STAGES))
        for method in sorted(p for p in run.reason.iterdir() if p.is_dir() and p.name not in ("init", "eval")):
            names = stages_of(method.name)
            layout += [("reason", IterPaths(method / f"round_{k}"), names) for k in numbered(method, "round_")]
    holder = lock_holder(run)
    print(f"{run.root}: " + (f"in use by {holder}" if holder else "not running"))
    now = time.time()
    for row in run_status(run, layout, holder_command(holder)):
        state, extra = row["state"], ""
        if state == "done":
            wall = f"{row['wall_s']:.0f} s" if row.get("wall_s") is not None else "?"
            extra = f"{wall:>8}  finished {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(row['finished']))}"
        elif state == "running" and row.get("since"):
            extra = f"{'':>8}  for {now - row['since']:.0f} s"
        print(f"{row['folder']:<28} {row['stage']:<12} {state:<8} {extra}".rstrip())
    if run.ppo.metrics.exists():
        print(f"{'ppo':<28} {'train':<12} done")
    current = run.root / progress.FILE
    if holder and current.exists():  # the same numbers the running process logs (`selfreward.progress`)
        state = json.loads(current.read_text())
        print(f"now: {progress.line(state, now)} (updated {now - state.get('updated', now):.0f} s ago)")


def cmd_push(args: argparse.Namespace) -> None:
    from selfreward.hub import push

    dry = Path(args.dry_run) if args.dry_run else None
    print(push(RunPaths(Path(args.run)), args.iteration, args.what, args.repo, args.private, dry))


def _eval_config(args: argparse.Namespace) -> tuple[RunConfig, RunPaths]:
    """judge-eval and compare: exactly one of --model and --run; the run's config unless --config."""
    if (args.model is None) == (args.run is None):
        raise ConfigError("give exactly one of --model and --run")
    config = args.config or (str(Path(args.run) / "config.yaml") if args.run else "configs/default.yaml")
    cfg = load_config(config, args.overrides)
    return cfg, RunPaths(Path(args.run) if args.run else cfg.run_dir)


ROBUSTNESS_COLUMNS = ["judge", "style", "placement", "shift", "ci_low", "ci_high", "n", "rose", "fell", "flip_rate"]
JUDGE_EVAL_COLUMNS = [
    "model",
    "items",
    "accuracy",
    "ci_low",
    "ci_high",
    "judge_ties",
    "parse_failure_rate",
    "mean_score",
    "rank_spearman",
    "direct_accuracy",
    "position_consistency",
    "seconds",
]
COMPARE_COLUMNS = [
    "a",
    "b",
    "judge",
    "judge_is_side",
    "pairs",
    "win",
    "tie",
    "loss",
    "win_rate",
    "win_rate_ci",
    "lc_win_rate",
    "lc_win_rate_ci",
    "position_consistency",
    "length_matched_win_rate",
    "n_length_matched",
    "rubric_win_rate",
    "rubric_length_matched_win_rate",
    "mean_chars_a",
    "mean_chars_b",
]
METHODS_COLUMNS = [
    "method",
    "win",
    "tie",
    "loss",
    "win_rate_vs_M0",
    "length_matched_win_rate",
    "rubric_win_rate_vs_M0",
    "mean_chars",
    "mean_chars_M0",
    "judge_accuracy",
    "answers",
    "judge_calls",
    "wall_s",
    "peak_rss_gib",
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) or signal.SIG_DFL  # None: set outside Python
    try:
        args.func(args)
    except UserError as e:  # config, data, a changed stage, a bad --where, a locked run: one line, exit code 2
        print(f"selfreward: error: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_children()
    return 0


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as SystemExit(143) (128 + 15): `with` blocks and `finally` clauses run, engines are closed."""
    raise SystemExit(128 + signum)


def stop_children(timeout: float = 5.0) -> None:
    """Terminate the child processes this one leaves (vLLM's engine core and workers), kill those still alive
    after `timeout` seconds. Python's multiprocessing resource tracker (it ignores SIGTERM and cleans up shared
    memory once this process is gone) and forkserver are left to exit on their own."""
    children = [c for c in psutil.Process().children(recursive=True) if not _multiprocessing_helper(c)]
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _multiprocessing_helper(process: psutil.Process) -> bool:
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:  # already gone
        return True
    return "multiprocessing.resource_tracker" in command or "multiprocessing.forkserver" in command


def print_rows(title: str, rows: list[dict], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    shown = [c for c in columns if any(r.get(c) is not None for r in rows)]
    for c in shown:
        table.add_column(c)
    for r in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in (r.get(c) for c in shown)))
    Console(width=200).print(table)


if __name__ == "__main__":
    sys.exit(main())
