"""docs/results.md from the result files: every table of measured numbers there is generated here, naming the file,
the command that made it, the date and the CPU, so the docs cannot drift from the data.

    python benchmarks/write_results.py            # rewrite docs/results.md
    python benchmarks/write_results.py --check    # exit 1 when docs/results.md is not what the files give
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "results.md"


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
        f"From `benchmarks/results/pair_sources.json`, made by `{data['command']}` (`make bench-pair-sources`) on "
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
        f"From `benchmarks/results/plan_vs_measured.json`, made by `{data['command']}` (`make bench-plan`) on "
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


SECTIONS = {"pair_sources.json": pair_sources, "plan_vs_measured.json": plan_vs_measured}


def render() -> str:
    out = [
        "# Measured results",
        "",
        "Generated by `python benchmarks/write_results.py` from the files under `benchmarks/results/`; do not edit by "
        "hand (a test checks this page is current). Each section names its file, the command, the date and the "
        "machine.",
        "",
    ]
    for name, section in SECTIONS.items():
        path = RESULTS / name
        if path.exists():
            out += section(json.loads(path.read_text()))
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is not current: run python benchmarks/write_results.py", file=sys.stderr)
            sys.exit(1)
        return
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
