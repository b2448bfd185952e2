"""The generated pages of docs/ and the README's generated rows: docs/results.md, and README.md's table between its
`<!-- rows generated ... -->` markers, from the result files under benchmarks/results/ (every table of
measured numbers there names its file, the command that made it, the date and the CPU, so the docs cannot drift from
the data) and docs/configuration.md from the field docstrings of selfreward/config.py (read with `ast`, so nothing is
imported).

    python benchmarks/write_results.py            # rewrite both pages (`make docs`)
    python benchmarks/write_results.py --check    # exit 1 when a page is not what its sources give
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "results.md"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
CONFIG_SOURCE = ROOT / "selfreward" / "config.py"


def interval(m: dict | None, signed: bool = False) -> str:
    if not m or m.get("value") is None:
        return "—"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(m['value'])} [{f.format(m['ci_low'])}, {f.format(m['ci_high'])}]"


def cpu_line(cpu: dict) -> str:
    flags = ", ".join(cpu.get("flags", [])) if isinstance(cpu.get("flags"), list) else cpu.get("flags", "")
    return f"{cpu.get('model', 'CPU')} ({flags or 'no AVX-512/AMX'})"


def pair_sources(data: dict) -> list[str]:
    lines = [
        "## Which pairs improve the model? `pairs.source` on checkable instructions",
        "",
        f"From `benchmarks/results/pair_sources.json`, made by `{shown(data['command'])}` (`make bench-pair-sources`) "
        "on "
        f"{data['date']}, {cpu_line(data['cpu'])}. The default config (`{data['config']}`), "
        f"{data['iterations']} iteration(s) per run from one seed SFT; models evaluated greedily on "
        f"{'the first ' + str(data['eval_limit']) + ' prompts' if data['eval_limit'] else 'all prompts'} of our "
        "held-out set `prompts/eval/constraints.jsonl`. Intervals are 95% bootstrap intervals over prompts (model "
        "accuracy and gains, paired by prompt) or over prompts of the iteration (judge-checker agreement).",
        "",
    ]
    first = next(iter(data["runs"].values()), None)
    if first:
        m0, m1 = first["M0"], first["M1"]
        lines += [
            f"Start: M0 (the model as shipped) prompt-level strict {interval(m0['prompt_strict'])}, loose "
            f"{interval(m0['prompt_loose'])}, {m0['mean_tokens']:.0f} tokens, {m0['cut_off']} cut off; M1 (seed SFT) "
            f"strict {interval(m1['prompt_strict'])}, loose {interval(m1['prompt_loose'])}, "
            f"{m1['mean_tokens']:.0f} tokens, {m1['cut_off']} cut off.",
            "",
        ]
    lines += [
        "| pairs.source | model | prompt strict | gain over M1 (strict) | judge vs checkers (iteration's candidates) "
        "| candidates following all | pairs (by source) | chosen / rejected tokens | answer tokens, cut off |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for source, run in data["runs"].items():
        for row in run["iterations"]:
            ci = row.get("judge_checker_ci") or [None, None]
            agreement = (
                f"{row['judge_checker_agreement']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (n={row['judge_checker_pairs']})"
                if row.get("judge_checker_agreement") is not None
                else "—"
            )
            by = ", ".join(f"{k} {v}" for k, v in row["pairs_by_source"].items() if v)
            following = row.get("candidate_prompt_strict")
            lines.append(
                f"| {source} | {row['model']} (iter {row['iteration']}) | {interval(row['prompt_strict'])} | "
                f"{interval(row['gain_vs_M1'], signed=True)} | {agreement} | "
                f"{'—' if following is None else f'{following:.3f}'} | {row['pairs']} ({by}) | "
                f"{row['mean_chosen_tokens']:.0f} / {row['mean_rejected_tokens']:.0f} | "
                f"{row['mean_answer_tokens']:.0f}, {row['cut_off']} |"
            )
    rows = [(source, row) for source, run in data["runs"].items() for row in run["iterations"]]
    better = [f"{s} ({r['model']})" for s, r in rows if (r.get("gain_vs_M1") or {}).get("ci_low", -1) > 0]
    worse = [f"{s} ({r['model']})" for s, r in rows if (r.get("gain_vs_M1") or {}).get("ci_high", 1) < 0]
    chance = [
        r for _, r in rows if r.get("judge_checker_ci") and r["judge_checker_ci"][0] <= 0.5 <= r["judge_checker_ci"][1]
    ]
    lines += [
        "",
        "Reading (computed from the file): "
        + (f"improved over M1 with the whole interval above zero: {', '.join(better)}. " if better else
           "no method improved over M1 with its interval above zero. ")
        + (f"Worse than M1 with the interval below zero: {', '.join(worse)}. " if worse else "")
        + (f"The judge's agreement with the checkers has 0.5 (chance) inside its interval in {len(chance)} of "
           f"{len(rows)} rows." if rows else ""),
    ]  # fmt: skip
    if data.get("note"):
        lines += ["", f"Note: {data['note']}."]
    lines.append("")
    return lines


def plan_vs_measured(data: dict) -> list[str]:
    lines = [
        "## The planner against a run's measured peaks",
        "",
        f"From `benchmarks/results/plan_vs_measured.json`, made by `{shown(data['command'])}` (`make bench-plan`) on "
        f"{data['date']}, {cpu_line(data['cpu'])}: `selfreward plan`'s memory per stage for the run's own config "
        f"(model shape from `{data['config']['shape_from']}`) beside the peak the run measured (the process tree's "
        "proportional set size, sampled every 2 s).",
        "",
        "| stage | planned GiB | measured GiB | planned / measured |",
        "|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(f"| {r['stage']} | {r['planned_gib']:.2f} | {r['measured_gib']} | {r['ratio']} |")
    lines.append("")
    return lines


def when(data: dict) -> str:
    """The date a result file was made: its `date`, or the day of its `time` stamp."""
    return str(data.get("date") or str(data.get("time", "?"))[:10])


def machine(data: dict) -> dict:
    m = data.get("machine") or {}
    return data.get("cpu") or m.get("cpu") or m


def engines(name: str, data: dict) -> list[str]:
    w = data["workload"]
    lines = [
        f"From `benchmarks/results/{name}`, made by `python benchmarks/bench_engines.py` (`make bench-engines`) on "
        f"{when(data)}, {cpu_line(machine(data))}, {data.get('machine', {}).get('cpus', '?')} cores: "
        f"{w['prompts']} prompts x {w['n']} samples x up to {w['max_tokens']} new tokens in {w['dtype']}"
        f"{' with per-request seeds' if w.get('reproducible') else ', one engine-wide seed'} (the file records "
        "the workload, not the arguments).",
        "",
        "| engine | start-up s | generation s | tokens | tok/s |",
        "|---|---|---|---|---|",
    ]
    for engine, r in data["results"].items():
        lines.append(
            f"| {engine} | {r['startup_s']} | {r['generation_s']} | {r['generated_tokens']:,} | {r['tokens_per_s']} |"
        )
    if data.get("ratio_vllm_over_transformers"):
        lines += ["", f"vLLM / transformers: {data['ratio_vllm_over_transformers']}x."]
    return lines + [""]


def engine_section(files: dict[str, dict]) -> list[str]:
    lines = [
        "## Generation engines: vLLM against transformers",
        "",
        "The candidates stage's shapes with the embedded model, each engine in its own process (on a CPU vLLM's "
        "engine runs inside it, as in the loop). Newest file first.",
        "",
    ]
    for name, data in sorted(files.items(), key=lambda kv: str(kv[1].get("time", "")), reverse=True):
        lines += engines(name, data)
    return lines


def train(data: dict) -> list[str]:
    g = data.get("gemm_gflops", {})
    lines = [
        "## Training against the GEMM ceiling",
        "",
        f"From `benchmarks/results/train.json`, made by `python benchmarks/bench_train.py` (`make bench-train`) on "
        f"{when(data)}, {cpu_line(machine(data))}. A 2048³ GEMM ran at {g.get('fp32')} GFLOP/s in fp32 and "
        f"{g.get('bf16')} in bf16 in the same run (the ceiling). Each trainer ran {data.get('steps')} optimiser "
        "steps in its own process, the first not timed; GFLOP/s count 6 x parameters x real (non-padding) tokens.",
        "",
        "| trainer | precision | batch x accumulation | s / step | real tokens / step | padding | real tokens / s "
        "| GFLOP/s | of the ceiling (of fp32) | peak PSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in data.items():
        if not isinstance(r, dict) or "s_per_step" not in r:
            continue
        lines.append(
            f"| {key} | {r['precision']} | {r.get('batch_size')} x {r.get('grad_accum')} | {r['s_per_step']} | "
            f"{r['real_tokens_per_step']:,} | {r.get('padding_fraction', 0):.1%} | {r['real_tokens_per_s']} | "
            f"{r['achieved_gflops']} | {r['fraction_of_ceiling']:.0%} ({r.get('fraction_of_fp32_ceiling', 0):.0%}) | "
            f"{r.get('peak_pss_gib', '—')} |"
        )
    return lines + [""]


def train_profile(data: dict) -> list[str]:
    lines = [
        "## Where a training step's time goes",
        "",
        f"From `benchmarks/results/train_profile.json`, made by `python benchmarks/bench_train.py --profile` "
        f"(`make bench-train BENCH_ARGS=--profile`) on {when(data)}, {cpu_line(machine(data))}: one optimiser step "
        "of each trainer under torch.profiler, self CPU time by kind of operator (profiling slows the step).",
        "",
        "| trainer | step wall s | " + " | ".join(KINDS) + " |",
        "|---|---|" + "---|" * len(KINDS),
    ]
    for key, r in data.items():
        if not isinstance(r, dict) or "by_kind" not in r:
            continue
        cells = [f"{r['by_kind'][k]['fraction']:.0%}" if k in r["by_kind"] else "—" for k in KINDS]
        lines.append(f"| {key} | {r['wall_s']} | " + " | ".join(cells) + " |")
    return lines + [""]


KINDS = ["matmul", "attention", "element-wise", "copies / casts / layout", "optimizer", "other"]


def drops(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "—"


def judge_loop(data: dict) -> list[str]:
    j = data["judge"]
    lines = [
        "## The judge stage's cost by mode, prefix cache on and off",
        "",
        f"From `benchmarks/results/judge_loop.json`, made by `python benchmarks/bench_judge_loop.py` "
        f"(`make bench-judge-loop`) on {when(data)}, {cpu_line(machine(data))}: iteration {data['iteration']} of "
        f"`{data['run']}` judged again by `{data['judge_model']}` with the loop's judge stage (K = {j['samples']}, "
        f"up to {j['max_tokens']} tokens, T {j['temperature']}), and its pairs made with the loop's rules.",
        "",
        "| mode | prefix cache | dtype | candidates (prompts) | s / 100 candidates | unscored | pairs | dropped "
        "| hit rate | same direction as `sampled` |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        hit = (r.get("prefix_cache") or {}).get("hit_rate")
        vs = r.get("vs_sampled")
        same = f"{vs['not_reversed']} of {vs['prompts_both_kept']}" if vs else "—"
        lines.append(
            f"| `{r['mode']}` | {'on' if r['prefix_cache_on'] else 'off'} | {r['dtype']} | {r['candidates']} "
            f"({r['prompts']}) | {r['seconds_per_100_candidates']} | {r['unscored_candidates']} | {r['pairs']} | "
            f"{drops(r['dropped'])} | {'—' if hit is None else f'{hit:.2f}'} | {same} |"
        )
    return lines + [""]


def pair_yield(data: dict) -> list[str]:
    j, rules = data["judge"], data["pairs_rules"]
    lines = [
        "## Pairs from fewer candidates or judge samples",
        "",
        f"From `benchmarks/results/pair_yield.json`, made by `python benchmarks/bench_pair_yield.py --run "
        f"{data['run']}` (`make bench-pair-yield`) on {when(data)}, {cpu_line(machine(data))}: the run's judged "
        f"iterations (n = {data['responses_n']} candidates, K = {j['samples']} `{j['mode']}` judge samples) replayed "
        f"with the first n' candidates and K' samples through the loop's pairing rules (noise_z {rules['noise_z']}, "
        f"length control {rules['length_control']}). No model runs.",
        "",
        "| iteration | n' | K' | candidates | judge samples | unscored | pairs | dropped | on a one-sample score "
        "| equal to the run's | reversed by the run's scores |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['iteration']} | {r['n']} | {r['k']} | {r['candidates']} | {r['judge_samples']} | "
            f"{r['unscored_candidates']} | {r['pairs']} | {drops(r['dropped'])} | {r['pairs_on_a_one_sample_score']} "
            f"| {r['pairs_equal_to_the_runs']} | {r['pairs_reversed_by_the_runs_scores']} |"
        )
    return lines + [""]


def judge_learning(data: dict) -> list[str]:
    labels = ", ".join(f"`{Path(x).name}`" for x in data["labels"])
    command = data["command"]
    for path in data["labels"]:  # the label files are the user's: named, wherever they lie
        command = command.replace(path, Path(path).name)
    lines = [
        "## Does the judge learn? The default loop beside its judge-training variants",
        "",
        f"From `benchmarks/results/judge_learning.json`, made by `{command}` (`make bench-judge-learning`) on "
        f"{data['date']}, {cpu_line(data['cpu'])}. Every run starts from the same seed SFT; the variants share the "
        "default loop's iteration-1 prompts and candidates (and judgements, where the variant does not change the "
        f"judge). Judge accuracy: each model judges the first {data['judge_limit']} items of {labels} (the loop's "
        "judge settings; rubric scores of each response alone, and the two responses compared in both orders), 95% "
        "bootstrap intervals over items. Model quality: prompt-level strict accuracy on the first "
        f"{data['eval_limit']} prompts of our held-out checkable instructions, gains paired by prompt.",
        "",
        "| run | model | judge, rubric | judge, both orders | judge vs checkers | prompt strict | gain over M1 "
        "| pairs (judge-role) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in data["runs"].items():
        for row in run["iterations"]:
            acc = next(iter((row.get("judge_accuracy") or {}).values()), {})
            rubric = direct = "—"
            if acc.get("accuracy") is not None:
                rubric = f"{acc['accuracy']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] (n={acc['n_pairs']})"
            if acc.get("direct_accuracy") is not None:
                direct = (
                    f"{acc['direct_accuracy']:.3f} [{acc['direct_ci_low']:.3f}, {acc['direct_ci_high']:.3f}] "
                    f"(n={acc['direct_pairs']})"
                )
            agree = row.get("judge_checker") or {}
            checkers = "—"
            if agree.get("judge_checker_agreement") is not None:
                low, high = agree["judge_checker_ci"]
                checkers = f"{agree['judge_checker_agreement']:.3f} [{low:.3f}, {high:.3f}]"
            pairs = "—" if row.get("pairs") is None else str(row["pairs"])
            if row.get("judge_pairs") is not None:
                pairs += f" ({row['judge_pairs']})"
            lines.append(
                f"| {name} | {row['model']} | {rubric} | {direct} | {checkers} | {interval(row.get('prompt_strict'))} "
                f"| {interval(row.get('gain_vs_M1'), signed=True)} | {pairs} |"
            )
    lines += [
        "",
        "The judge vs checkers column is the agreement of the model that judged that iteration's candidates (M_k "
        "judges iteration k); the judge columns are the row's model M_{k+1}.",
    ]
    for name, run in data["runs"].items():
        for row in run["iterations"]:
            if row.get("meta_outcomes"):
                outcomes = ", ".join(f"{k} {v}" for k, v in sorted(row["meta_outcomes"].items()))
                lines.append(
                    f"Meta-judge in `{name}`, iteration {row['iteration']}: candidates by outcome: {outcomes} "
                    f"(preferred: the verdict held in both orders; only those give judge-role pairs)."
                )
    return lines + [""]


def ci3(value: float | None, low: float | None, high: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    f = "{:+.2f}" if signed else "{:.3f}"
    return f"{f.format(value)} [{f.format(low)}, {f.format(high)}]"


def shift_cell(r: dict | None) -> str:
    """A probe row's score shift with its interval and n."""
    return "" if r is None else f"{ci3(r['shift'], r['ci_low'], r['ci_high'], signed=True)} ({r['n']})"


def shown(text: str) -> str:
    """Paths in a recorded command as a reader of the docs knows them: label files by name, runs from `iterations/`
    (a benchmark may run on a clone elsewhere)."""
    text = re.sub(r"[^\s']*/([^/\s']+\.jsonl)", r"\1", text)
    return re.sub(r"[^\s']*/(iterations/)", r"\1", text)


def persuasion(data: dict) -> list[str]:
    lines = [
        "## Can a sentence addressed to the grader buy points? Defences measured",
        "",
        "From `benchmarks/results/persuasion.json`, made by "
        + " then ".join(f"`{shown(c)}`" for c in data.get("commands") or [data["command"]])
        + f" (`make bench-persuasion`) on "
        f"{data['date']}, {cpu_line(data['cpu'])}, on `{shown(data['run'])}` (the default config): its M1 judges the "
        f"{data['probed']} lowest-scored candidates of iteration 1 as they are and with one sentence in each style at "
        "the end, from our set (`ours`, the phrasings the detector was written for) or in other words (`unseen`, "
        "never used to write it): the mean score shift out of 5, its paired 95% bootstrap interval and n answers "
        "scored both times. It then judges the first "
        f"{data['label_items']} items of `{data['labels']}` (rubric accuracy against the human labels) and every "
        "checked candidate of iteration 1 (agreement with the checkers), each with the defence's settings.",
        "",
    ]
    styles = list(dict.fromkeys(r["style"] for d in data["defences"].values() for r in d["probe"]))
    lines += [
        "| defence | sentences | " + " | ".join(f"{s}: shift (n)" for s in styles) + " | accuracy vs humans (n) | "
        "agreement with checkers (n) | s (all sets) |",
        "|---|---|" + "---|" * (len(styles) + 3),
    ]
    flips = []
    for name, d in data["defences"].items():
        sets = list(dict.fromkeys(r.get("sentences", "ours") for r in d["probe"]))
        for i, sentence_set in enumerate(sets):
            by = {r["style"]: r for r in d["probe"] if r.get("sentences", "ours") == sentence_set}
            cells = [shift_cell(by.get(s)) for s in styles]
            h, c = d["humans"], d["checkers"]
            ci = c.get("judge_checker_ci") or [None, None]
            overrides = " ".join(f"`{o}`" for o in d["overrides"]) or "the run's judge"
            accuracies = (
                f"{ci3(h['accuracy'], h['ci_low'], h['ci_high'])} ({h['n_pairs']}) | "
                f"{ci3(c['judge_checker_agreement'], *ci)} ({c['judge_checker_pairs']}) | {d['seconds']:.0f}"
                if i == 0
                else "〃 | 〃 |"
            )
            lines.append(f"| {name} ({overrides}) | {sentence_set} | " + " | ".join(cells) + f" | {accuracies} |")
            won = ", ".join(f"{r['style']} {r['flipped']}/{r['pairs_won']}" for r in by.values() if r.get("pairs_won"))
            flips.append(f"- {name}, {sentence_set} sentences: {won or '—'}")
    if any(not line.endswith("—") for line in flips):
        lines += [
            "",
            "Flips of the both-order comparison of an answer against its prompt's best-scored candidate (flipped / "
            "comparisons the better answer won in both orders before the other got a sentence):",
            "",
            *flips,
        ]
    else:
        lines += [
            "",
            f"Flips: of the {data['probed_pairs']} answers with a better-scored partner, the partner won no "
            "comparison in both orders even before a sentence was added (the judge's verdicts followed the position), "
            "so no flip could be measured.",
        ]
    by_model = data.get("by_model") or {}
    if by_model:
        base = [r for r in data["defences"].get("none", {}).get("probe", []) if r.get("sentences", "ours") == "ours"]
        models = {"M1": base, **by_model} if base else by_model
        lines += [
            "",
            "Each later model of the run as the judge (`--by-iteration`; answers as written, our sentences): is the "
            "judge easier to flatter after DPO on its own pairs?",
            "",
            "| judge | " + " | ".join(f"{s}: shift (n)" for s in styles) + " |",
            "|---|" + "---|" * len(styles),
        ]
        for label, probe in models.items():
            by = {r["style"]: r for r in probe}
            cells = [shift_cell(by.get(s)) for s in styles]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    rows = data.get("directed_by_iteration") or []
    if rows:
        lines += [
            "",
            f"Evaluator-directed text in `{shown(data['run'])}` itself (the detector `judge_text.evaluator_directed` "
            "on each candidate; chosen and rejected answers of the iteration's pairs):",
            "",
            "| iteration | candidates flagged | share [95% Wilson] | in chosen / rejected answers (pairs) |",
            "|---|---|---|---|",
        ]
        for r in rows:
            low, high = r.get("share_ci") or [None, None]
            lines.append(
                f"| {r['iteration']} | {r['flagged']} of {r['of']} | {ci3(r['share'], low, high)} | "
                f"{r.get('chosen')} / {r.get('rejected')} ({r.get('pairs')}) |"
            )
    return lines + [""]


SECTIONS = {
    "pair_sources.json": pair_sources,
    "judge_learning.json": judge_learning,
    "persuasion.json": persuasion,
    "plan_vs_measured.json": plan_vs_measured,
    "train.json": train,
    "train_profile.json": train_profile,
    "judge_loop.json": judge_loop,
    "pair_yield.json": pair_yield,
}


def render() -> str:
    out = [
        "# Measured results",
        "",
        "Generated by `python benchmarks/write_results.py` (`make docs`) from the files under `benchmarks/results/`; "
        "do not edit by hand (a test checks this page is current). Each section names its file, the command, the "
        "date and the machine. The history of whole runs is in [LOG.md](LOG.md); what the numbers mean is in "
        "[performance.md](performance.md).",
        "",
    ]
    for name, section in SECTIONS.items():
        path = RESULTS / name
        if path.exists():
            out += section(json.loads(path.read_text()))
    engine_files = {p.name: json.loads(p.read_text()) for p in sorted(RESULTS.glob("engines*.json"))}
    if engine_files:
        out += engine_section(engine_files)
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- docs/configuration.md


def _src(node: ast.AST | None, text: str) -> str:
    return "" if node is None else (ast.get_source_segment(text, node) or "")


def _default(node: ast.AST | None, text: str, sections: set[str]) -> str:
    """A field's default as the reader would write it in YAML (`field(...)` unwrapped)."""
    if node is None:
        return "(required)"
    if isinstance(node, ast.Call) and _src(node.func, text) == "field":
        kw = {k.arg: k.value for k in node.keywords}
        if "default" in kw:
            return _default(kw["default"], text, sections)
        factory = kw.get("default_factory")
        if isinstance(factory, ast.Lambda):
            return _src(factory.body, text)
        name = _src(factory, text)
        return {"list": "[]", "dict": "{}"}.get(name, "")
    value = _src(node, text)
    return {"EMBEDDED_MODEL": '"smollm2-135m-instruct"', '""': "''"}.get(value, value)


def _type(node: ast.AST, text: str, aliases: dict[str, str]) -> str:
    src = _src(node, text)
    if src.startswith("Literal["):
        return "one of " + ", ".join(f"`{ast.literal_eval(e)}`" for e in node.slice.elts)  # type: ignore[attr-defined]
    for alias, meaning in aliases.items():
        src = src.replace(alias, meaning) if src == alias or src.startswith(alias + " ") else src
    return src.replace("list[str]", "list of strings").replace("| None", "or null")


def _one_line(doc: str) -> str:
    return " ".join(doc.split()).replace("|", "\\|")


def configuration() -> str:
    text = CONFIG_SOURCE.read_text()
    tree = ast.parse(text)
    aliases: dict[str, str] = {}
    classes: dict[str, tuple[str, list[str], list[tuple[str, str, str, str, str]]]] = {}
    for node in tree.body:
        # `Count = Annotated[int, Range(lambda v: v >= 1, ">= 1")]`: the type's name, its base type and range
        if isinstance(node, ast.Assign) and _src(node.value, text).startswith("Annotated["):
            base, bound = node.value.slice.elts  # type: ignore[attr-defined]
            wanted = ast.literal_eval(bound.args[1])  # type: ignore[attr-defined]
            aliases[node.targets[0].id] = f"{_src(base, text)} {wanted}"  # type: ignore[attr-defined]
        if isinstance(node, ast.ClassDef) and any(_src(d, text) == "dataclass" for d in node.decorator_list):
            fields = []
            body = node.body
            for i, item in enumerate(body):
                if isinstance(item, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    doc = (
                        nxt.value.value
                        if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                        else ""
                    )
                    fields.append((item.target.id, item.annotation, item.value, doc))  # type: ignore[attr-defined]
            classes[node.name] = (ast.get_docstring(node) or "", [_src(b, text) for b in node.bases], fields)

    def all_fields(name: str) -> list:
        doc, bases, own = classes[name]
        merged: dict[str, tuple] = {}
        for base in bases:
            if base in classes:
                merged.update({f[0]: f for f in all_fields(base)})
        merged.update({f[0]: f for f in own})
        return list(merged.values())

    section_of = {}
    top = []
    for fname, ann, value, doc in all_fields("RunConfig"):
        cls = _src(ann, text)
        if cls in classes:
            section_of[fname] = cls
        else:
            top.append((fname, ann, value, doc))
    out = [
        "# Configuration reference",
        "",
        "Generated by `python benchmarks/write_results.py` (`make docs`) from the field docstrings of "
        "`selfreward/config.py`; do not edit by hand (a test checks this page is current).",
        "",
        "A run's configuration is one YAML file (`configs/default.yaml` unless `CONFIG=` or `--config` names "
        'another) plus `key=value` overrides on the command line: `make iterate ARGS="judge.samples=5 '
        'run_name=k5"`, or `.venv/bin/selfreward iterate judge.samples=5`. A key the configuration does not '
        "have, a value of the wrong type or out of its range stops the run with one line naming the key. "
        "`.venv/bin/selfreward config --config FILE` prints the resolved configuration, and every run saves it as "
        "`iterations/<run>/config.yaml`. Each stage fingerprints its own section: a finished stage whose settings "
        "changed is refused on a re-run unless `--force` (see [runs.md](runs.md)).",
        "",
        "Ranges: " + "; ".join(f"`{k}` is {v}" for k, v in aliases.items()) + ". Every float must be finite.",
        "",
        "Sections: " + ", ".join(f"[`{s}`](#{s})" for s in section_of) + ".",
        "",
        "## Top level",
        "",
    ]

    def table(fields: list, prefix: str) -> list[str]:
        rows = ["| key | type | default | what it does |", "|---|---|---|---|"]
        for fname, ann, value, doc in fields:
            rows.append(
                f"| `{prefix}{fname}` | {_type(ann, text, aliases)} | `{_default(value, text, set())}` | "
                f"{_one_line(doc)} |"
            )
        return rows

    out += [_one_line(classes["RunConfig"][0]), "", *table(top, ""), ""]
    for section, cls in section_of.items():
        out += [f"## {section}", "", _one_line(classes[cls][0]), "", *table(all_fields(cls), f"{section}."), ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- first runs, by CPU class

CPU_CLASSES = {
    "amx": "Intel Xeon with AMX (native bf16)",
    "avx512_bf16": "AVX512-BF16, no AMX (native bf16)",
    "avx2": "AVX2 only (fp32 everywhere)",
}
FIRST_BEGIN = "<!-- generated by make docs from benchmarks/results/first_run_*.json -->"
FIRST_END = "<!-- end of generated section -->"


def first_runs() -> dict[str, dict]:
    """The `make bench-first-run` files by CPU class, in the order of CPU_CLASSES."""
    found = {p.stem.removeprefix("first_run_"): json.loads(p.read_text()) for p in RESULTS.glob("first_run_*.json")}
    return {c: found[c] for c in CPU_CLASSES if c in found}


def minutes(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def run_peak(record: dict) -> float:
    return max((it.get("peak_rss_gib") or 0 for it in record["iterations"]), default=0.0)


def reused_share(record: dict) -> str:
    stages = [s for it in record["iterations"] for s in it["stages"].values()]
    reused = sum(1 for s in stages if s.get("reused"))
    return f"{reused} of {len(stages)} stages reused"


def first_run_rows() -> list[str]:
    """One row per CPU class: install, the first run, the same settings again, one setting changed."""
    rows = [
        "| CPU class | CPU (flags) | date | `make install` | `make iterate N=3`, first | again (new run, same "
        "settings) | one setting changed | peak memory | file |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    files = first_runs()
    for cls, label in CPU_CLASSES.items():
        data = files.get(cls)
        if data is None:
            rows.append(f"| {label} | | not measured with `make bench-first-run` | | | | | | |")
            continue
        steps, runs = data["steps"], data["runs"]
        again = steps.get("again", {}).get("seconds")
        changed = steps.get("changed", {}).get("seconds")
        first = steps["first"]["seconds"]
        rows.append(
            f"| {label} | {cpu_line(data['cpu'])}, {data['cores']} cores, {data['memory_gib']} GiB | {data['date']} | "
            f"{minutes(steps['install']['seconds'])} | **{minutes(first)}** | "
            + (f"{minutes(again)} ({again / first:.1%}; {reused_share(runs['again'])}) | " if again else "— | ")
            + (
                f"`{data['change']}`: {minutes(changed)} ({changed / first:.1%}; {reused_share(runs['changed'])}) | "
                if changed
                else "— | "
            )
            + f"{run_peak(runs['first']):.2f} GiB | `first_run_{cls}.json` |"
        )
    return rows


TIMES = ("wall_s", "peak_rss_gib")


def first_run_stages(cls: str, data: dict) -> list[str]:
    """The first run of one CPU class, stage by stage."""
    its = data["runs"]["first"]["iterations"]
    names = list(dict.fromkeys(name for it in its for name in it["stages"]))
    lines = [
        f"{CPU_CLASSES[cls]}: the first run stage by stage (`first_run_{cls}.json`, {data['date']}, commit "
        f"{data['commit'][:7]}; seconds, peak memory of the stage in GiB; iteration 0 is the seed SFT):",
        "",
        "| stage | " + " | ".join(f"iteration {it['iteration']}" for it in its) + " |",
        "|---|" + "---|" * len(its),
    ]
    for name in names:
        cells = []
        for it in its:
            s = it["stages"].get(name)
            if s is None:
                cells.append("")
                continue
            extra = ", ".join(
                f"{k.replace('_', ' ')} {v}" for k, v in s.items() if k not in ("wall_s", "peak_rss_gib")
            )
            cells.append(f"{s['wall_s']:.0f} s, {s['peak_rss_gib']} GiB" + (f" ({extra})" if extra else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| iteration | " + " | ".join(f"{it['wall_s']:.0f} s" for it in its) + " |")
    return lines + [""]


def performance_section() -> list[str]:
    lines = [
        "`make bench-first-run` on each CPU class: `make install` and `make iterate N=3` from a fresh clone, then the "
        "same command as a new run (what it does not recompute comes from the stage store) and a run that changes "
        "one iteration setting, each timed in one piece on a 2-core machine with nothing else running. Generated from "
        "`benchmarks/results/first_run_<class>.json` by `make docs`.",
        "",
        *first_run_rows(),
        "",
    ]
    for cls, data in first_runs().items():
        steps = data["steps"]
        for name, step in steps.items():
            if step.get("timed_by"):
                lines += [f"{CPU_CLASSES[cls]}, `{name}` ({step['command']}): {step['timed_by']}.", ""]
            if step.get("resumed"):
                lines += [f"{CPU_CLASSES[cls]}, `{name}` resumed after an interruption: its time is only a part.", ""]
        lines += first_run_stages(cls, data)
    return lines


def with_section(text: str, begin: str, end: str, lines: list[str]) -> str:
    """`text` with what stands between the markers `begin` and `end` replaced by `lines`."""
    head, rest = text.split(begin + "\n", 1)
    _, tail = rest.split(end, 1)
    return head + begin + "\n" + "".join(line + "\n" for line in lines) + end + tail


def performance() -> str:
    return with_section(PERFORMANCE.read_text(), FIRST_BEGIN, FIRST_END, performance_section())


README = ROOT / "README.md"
PERFORMANCE = ROOT / "docs" / "performance.md"
BEGIN = "<!-- rows generated by make docs from benchmarks/results/ -->"
END = "<!-- end of generated rows -->"


def readme_rows() -> list[str]:
    """The README's headline rows that come from result files in the repository (the rest name a run's files)."""
    rows = []
    sources_file, learning_file = RESULTS / "pair_sources.json", RESULTS / "judge_learning.json"
    if learning_file.exists():
        data = json.loads(learning_file.read_text())
        by_model = {r["model"]: r for r in data["runs"].get("default", {}).get("iterations", [])}
        cells = []
        for model in ("M1", "M2"):
            acc = next(iter((by_model.get(model, {}).get("judge_accuracy") or {}).values()), {})
            if acc.get("accuracy") is not None:
                cells.append(f"{acc['accuracy']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] (n={acc['n_pairs']})")
        labels = ", ".join(Path(x).name for x in data["labels"])
        rows.append(
            f"| judge vs human labels after each iteration (first {data['judge_limit']} items of {labels}; "
            f"rubric, K=3) | M1 / M2 | {' / '.join(cells)} | {data['cpu'].get('model', 'CPU')}, {data['date']}, "
            "`judge_learning.json` |"
        )
    persuasion_file = RESULTS / "persuasion.json"
    if persuasion_file.exists():
        data = json.loads(persuasion_file.read_text())

        def largest(defence: str, sentence_set: str) -> str:
            rows = [
                r
                for r in data["defences"].get(defence, {}).get("probe", [])
                if r.get("sentences", "ours") == sentence_set and r["shift"] is not None
            ]
            if not rows:
                return "—"
            r = max(rows, key=lambda r: r["shift"])
            return f"{ci3(r['shift'], r['ci_low'], r['ci_high'], signed=True)} ({r['style']}, n={r['n']})"

        rows.append(
            f"| largest score shift from one sentence addressed to the grader ({data['probed']} answers, 5 styles) | "
            f"M1 reading answers as written / with `judge.strip_directed` (default) / other words, stripped | "
            f"{largest('none', 'ours')} / {largest('strip directed sentences', 'ours')} / "
            f"{largest('strip directed sentences', 'unseen')} | {data['cpu'].get('model', 'CPU')}, {data['date']}, "
            "`persuasion.json` |"
        )
    if sources_file.exists():
        data = json.loads(sources_file.read_text())
        where = f"{data['cpu'].get('model', 'CPU')}, {data['date']}, `pair_sources.json`"
        judge = data["runs"]["judge"]
        agree = [
            f"{r['judge_checker_agreement']:.3f} [{r['judge_checker_ci'][0]:.3f}, {r['judge_checker_ci'][1]:.3f}] "
            f"(n={r['judge_checker_pairs']})"
            for r in judge["iterations"]
            if r.get("judge_checker_agreement") is not None
        ]
        labels = " / ".join(f"M{r['iteration']}" for r in judge["iterations"])
        rows.append(
            f"| judge vs the checkers, on the loop's own candidates | {labels} judging iterations "
            f"{' / '.join(str(r['iteration']) for r in judge['iterations'])} | {' / '.join(agree)} | {where} |"
        )
        rows.append(
            f"| checkable instructions, prompt-level strict ({data['eval_limit']} held-out prompts) | M0 / M1 | "
            f"{interval(judge['M0']['prompt_strict'])} / {interval(judge['M1']['prompt_strict'])} | {where} |"
        )
        sources = list(data["runs"])
        for i in range(data["iterations"]):
            gains = [interval(data["runs"][src]["iterations"][i]["gain_vs_M1"], signed=True) for src in sources]
            rows.append(f"| | M{i + 2}, pairs by {' / '.join(sources)} | gain over M1 {' / '.join(gains)} | {where} |")
    return rows


def readme_first_runs() -> list[str]:
    """The README's short table of what a first run takes on each CPU class (the details in performance.md)."""
    rows = ["| CPU (2 cores) | `make iterate N=3`, first run | with `make install` | the same again, new run | peak "
            "memory | measured |", "|---|---|---|---|---|---|"]  # fmt: skip
    files = first_runs()
    for cls, label in CPU_CLASSES.items():
        data = files.get(cls)
        if data is None:
            rows.append(f"| {label} | not measured with `make bench-first-run` | | | | |")
            continue
        steps = data["steps"]
        first, install = steps["first"]["seconds"], steps["install"]["seconds"]
        again = steps.get("again", {}).get("seconds")
        rows.append(
            f"| {label}: {data['cpu'].get('model', 'CPU')} | **{minutes(first)}** | {minutes(first + install)} | "
            f"{minutes(again)} | {run_peak(data['runs']['first']):.2f} GiB | {data['date']}, `first_run_{cls}.json` |"
        )
    return rows


def readme() -> str:
    """README.md with its generated rows (between BEGIN and END, FIRST_BEGIN and FIRST_END) from the result files."""
    table = ["| what | model | result | measured |", "|---|---|---|---|", *readme_rows()]
    text = with_section(README.read_text(), BEGIN, END, table)
    return with_section(text, FIRST_BEGIN, FIRST_END, readme_first_runs())


PAGES = {DOC: render, CONFIG_DOC: configuration, README: readme, PERFORMANCE: performance}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for page, make in PAGES.items():
        text = make()
        if args.check:
            if not page.exists() or page.read_text() != text:
                stale.append(page)
            continue
        page.write_text(text)
        print(f"wrote {page.relative_to(ROOT)}")
    if stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"{names} not current: run python benchmarks/write_results.py (make docs)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
