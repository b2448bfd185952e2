"""Head-to-head: two models answer the same held-out prompts and a judge model compares each pair of
answers in both positions (`selfreward compare`).

Reads  the held-out prompts (`compare.prompts`: JSONL with `text`; the default
       prompts/eval/heldout.jsonl is ours and shares no prompt with the seed data), the models, the judge
Writes iterations/<run>/compare/answers/<label>.jsonl   each model's answers (made once, reused while the
                                                        model, prompts and settings are unchanged)
       iterations/<run>/compare/<a>_vs_<b>.jsonl        per prompt: both answers, P(A better) in each
                                                        position, the verdict
       iterations/<run>/compare.json                    one row per comparison (replaced when re-run)

Verdict. The judge reads `prompts/compare.txt` with the two answers as A and B; its reply is prefilled
with `Better answer:` and the next-token probabilities of ` A` and ` B`, renormalised over the two, give
P(A better): one forward pass, no sampling, and nothing an answer says is parsed as a verdict. Every pair
is judged twice, the model under test first as A, then as B. Win: preferred in both positions; loss: the
other answer is preferred in both; tie: the preference follows the position (position bias).
`position_consistency` is the fraction of pairs whose verdict does not flip with the position.

    win_rate = (wins + ties / 2) / pairs

with a 95% percentile-bootstrap interval over prompts (`win_rate_ci`). The model that judges a row should be
neither of its two sides: a row whose judge is one of them says so in `judge_is_side` (`a` or `b`) and is
logged as a warning (a model judging itself is no fixed judge).

Rubric view (`rubric_*` fields): the same judge also scores each answer alone with the loop's rubric
(`judge.judge_texts`, K samples averaged, in `compare.judge_mode`); the higher mean wins, equal or unscored
is a tie. It cannot be position-biased, which matters for small judges: the 135M model picked the same letter in both
positions for every pair (position_consistency 0), so its pairwise verdicts were all ties.

Length control. Self-rewarding is known to lengthen answers, and a judge that likes length would reward
length alone. `lc_win_rate` is AlpacaEval 2's length-controlled win rate (`stats.length_controlled_rate`): a
logistic regression of the per-prompt preference (1 / 0.5 / 0) on tanh of the answers' length difference in
characters over its standard deviation; the win rate at zero length difference, with a bootstrap interval
(`lc_win_rate_ci`). Beside it the matched subset: the win rate over the pairs whose answers have similar length,
|len_a - len_b| <= length_tolerance * max(len_a, len_b) (default 20%); `n_length_matched` says how many pairs
it rests on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from selfreward.artifacts import (
    DataError,
    RunPaths,
    read_json,
    read_jsonl,
    slug,
    write_json,
    write_jsonl,
)
from selfreward.config import RunConfig, fingerprint
from selfreward.generation import Generator, SamplingSpec, open_generator
from selfreward.inputs import load_prompt_file
from selfreward.judge_text import VERDICT_PREFILL, load_pairwise_template, render_pairwise_prompt
from selfreward.loop.judge import choice_token_ids, judge_texts
from selfreward.models import resolve_model
from selfreward.records import Prompt
from selfreward.stats import bootstrap_ci, length_controlled_rate
from selfreward.tracking import Tracker, flatten

log = logging.getLogger(__name__)

Verdict = Literal["win", "tie", "loss"]
PREFERENCE: dict[str, float] = {"win": 1.0, "tie": 0.5, "loss": 0.0}


# --------------------------------------------------------------------------- models of a run


def run_models(cfg: RunConfig, run: RunPaths) -> list[tuple[str, str]]:
    """(label, model folder) of every finished model of a run: `M0` (the configured model), then
    `iter_0` (the seed SFT model, when present) and `iter_K` for each iteration K that wrote its model."""
    models = [("M0", resolve_model(cfg.model, cfg.cache_dir))]
    for k in [0, *run.iterations()]:
        path = run.iteration(k).model
        if (path / "config.json").exists():
            models.append((f"iter_{k}", str(path)))
    return models


# --------------------------------------------------------------------------- pure parts


def load_template(path: str) -> str:
    """The comparison template (`compare.template`): ConfigError if missing or without a placeholder."""
    return load_pairwise_template(path)


def render_compare_prompt(template: str, instruction: str, a: str, b: str, special_tokens: Iterable[str] = ()) -> str:
    """The comparison prompt (`judge_text.render_pairwise_prompt`: the three texts sanitised, filled in one pass)."""
    return render_pairwise_prompt(template, instruction, a, b, special_tokens)


def verdict(p_first: float, p_second: float) -> Verdict:
    """The verdict for the model under test, from P(A better) when its answer was A (`p_first`)
    and when it was B (`p_second`). 0.7, 0.2 -> win; 0.3, 0.8 -> loss; 0.7, 0.6 -> tie (follows A)."""
    first = p_first > 0.5
    second = p_second < 0.5
    if first and second:
        return "win"
    if not first and not second and p_first != 0.5 and p_second != 0.5:
        return "loss"
    return "tie"


def rubric_verdict(score_a: float | None, score_b: float | None) -> Verdict:
    """The pointwise view: each answer scored alone by the loop's judge (no position to be biased by).
    3.2 vs 2.9 -> win; 2.0 vs 2.0 -> tie; an unscored answer (None) -> tie."""
    if score_a is None or score_b is None or score_a == score_b:
        return "tie"
    return "win" if score_a > score_b else "loss"


def length_matched(len_a: int, len_b: int, tolerance: float) -> bool:
    """|len_a - len_b| <= tolerance * max(len_a, len_b): 100 vs 85 at 0.2 -> True, 100 vs 70 -> False."""
    return abs(len_a - len_b) <= tolerance * max(len_a, len_b)


def summarize(verdicts: list[Verdict], lengths: list[tuple[int, int]], tolerance: float) -> dict:
    """Win / tie / loss counts, win rate, and the same over length-matched pairs (module docstring)."""
    wins, ties, losses = (verdicts.count(v) for v in ("win", "tie", "loss"))
    n = len(verdicts)
    matched = [v for v, (la, lb) in zip(verdicts, lengths, strict=True) if length_matched(la, lb, tolerance)]
    values = [PREFERENCE[v] for v in verdicts]
    lc = length_controlled_rate(values, [float(la - lb) for la, lb in lengths])
    return {
        "pairs": n,
        "win": wins,
        "tie": ties,
        "loss": losses,
        "win_rate": (wins + ties / 2) / n if n else None,
        "win_rate_ci": list(bootstrap_ci(values)) if n else None,
        "lc_win_rate": lc["value"] if n else None,
        "lc_win_rate_ci": [lc["ci_low"], lc["ci_high"]] if n else None,
        "position_consistency": (wins + losses) / n if n else None,
        "n_length_matched": len(matched),
        "length_matched_win_rate": (matched.count("win") + matched.count("tie") / 2) / len(matched)
        if matched
        else None,
        "mean_chars_a": sum(la for la, _ in lengths) / n if n else None,
        "mean_chars_b": sum(lb for _, lb in lengths) / n if n else None,
    }


# --------------------------------------------------------------------------- engine parts


def preferences(gen: Generator, template: str, triples: list[tuple[str, str, str]]) -> list[float | None]:
    """P(A better) for each (instruction, answer A, answer B), read from the judge's next token; None
    where the comparison prompt does not fit in the engine's context."""
    ids = choice_token_ids(gen, VERDICT_PREFILL, [" A", " B"])
    prompts = [
        gen.render_chat([{"role": "user", "content": render_compare_prompt(template, q, a, b)}], VERDICT_PREFILL)
        for q, a, b in triples
    ]
    fits = [gen.fits(p, 1) for p in prompts]
    probs = iter(gen.token_probs([p for p, ok in zip(prompts, fits, strict=True) if ok], ids) if any(fits) else [])
    out: list[float | None] = []
    for ok in fits:
        p = next(probs) if ok else None
        out.append(None if p is None else p[0] / (p[0] + p[1]) if p[0] + p[1] > 0 else 0.5)
    return out


def both_orders(gen: Generator, template: str, items: list[tuple[str, str, str]]) -> list[tuple[float, float] | None]:
    """(P(A better) with the first answer as A, the same with it as B) for (instruction, x, y) items;
    None where either order does not fit in the context."""
    swapped = [(q, y, x) for q, x, y in items]
    probs = preferences(gen, template, items + swapped)
    return [
        None if p1 is None or p2 is None else (p1, p2)
        for p1, p2 in zip(probs[: len(items)], probs[len(items) :], strict=True)
    ]


@dataclass
class HeadToHead:
    a: str
    b: str
    judge: str


def answers(cfg: RunConfig, label: str, model: str, prompts: list[Prompt], out_dir: Path) -> list[str]:
    """The model's answers to `prompts` (cached in out_dir/answers/<label>.jsonl)."""
    path = out_dir / "answers" / f"{slug(label)}.jsonl"
    meta = out_dir / "answers" / f"{slug(label)}.json"
    key = fingerprint(model, model_stamp(model), [p.text for p in prompts], cfg.compare, cfg.seed)
    if path.exists() and meta.exists() and read_json(meta).get("fingerprint") == key:
        return [r["text"] for r in read_jsonl(path, ["text"])]
    with open_generator(cfg.engine, model, Path(cfg.cache_dir), seed=cfg.seed) as gen:
        spec = SamplingSpec(n=1, temperature=cfg.compare.temperature, max_tokens=cfg.compare.max_tokens, seed=cfg.seed)
        outs = gen.chat([[{"role": "user", "content": p.text}] for p in prompts], spec)
    texts = [o[0].text for o in outs]
    write_jsonl(path, ({"prompt_id": p.prompt_id, "text": t} for p, t in zip(prompts, texts, strict=True)))
    write_json(meta, {"model": model, "fingerprint": key})
    return texts


def model_stamp(model: str) -> list[float]:
    """Modification times of a local model's weights, so a retrained folder is not mistaken for the old one."""
    return sorted(p.stat().st_mtime for p in Path(model).glob("*.safetensors")) if Path(model).is_dir() else []


def head_to_head(cfg: RunConfig, out_dir: Path, a: tuple[str, str], b: tuple[str, str], judge: str) -> dict:
    """Model a (label, path) against model b on the held-out prompts, judged by `judge` in both positions."""
    start = time.perf_counter()
    prompts = load_prompt_file(cfg.compare.prompts)
    answers_a = answers(cfg, a[0], a[1], prompts, out_dir)
    answers_b = answers(cfg, b[0], b[1], prompts, out_dir)
    template = load_template(cfg.compare.template)
    items = [(p.text, x, y) for p, x, y in zip(prompts, answers_a, answers_b, strict=True)]
    with open_generator(cfg.engine, judge, Path(cfg.cache_dir), seed=cfg.seed) as gen:
        probs = both_orders(gen, template, items)
        if None in probs:  # checked before the rubric pass, which would be wasted
            raise DataError(f"{cfg.compare.prompts}: a comparison prompt does not fit in engine.max_model_len")
        rubric_judge = dataclasses.replace(cfg.judge, mode=cfg.compare.judge_mode)
        rubric = judge_texts(
            gen, rubric_judge, [(q, x) for q, x, _ in items] + [(q, y) for q, _, y in items], cfg.seed
        )
    verdicts = [verdict(*p) for p in probs]
    scores = list(zip([j.score for j in rubric[: len(items)]], [j.score for j in rubric[len(items) :]], strict=True))
    rubric_verdicts = [rubric_verdict(sa, sb) for sa, sb in scores]
    lengths = [(len(x), len(y)) for _, x, y in items]
    write_jsonl(
        out_dir / f"{slug(a[0])}_vs_{slug(b[0])}.jsonl",
        (
            {
                "prompt_id": p.prompt_id,
                "prompt": p.text,
                "answer_a": x,
                "answer_b": y,
                "p_a_first": p1,
                "p_a_second": p2,
                "verdict": v,
                "rubric_score_a": sa,
                "rubric_score_b": sb,
                "rubric_verdict": rv,
            }
            for p, (_, x, y), (p1, p2), v, (sa, sb), rv in zip(
                prompts, items, probs, verdicts, scores, rubric_verdicts, strict=True
            )
        ),
    )
    side = judge_side(judge, a[1], b[1])
    if side:
        log.warning(
            "compare: the judge %s is side %s of %s vs %s: not a fixed judge for this row", judge, side, a[0], b[0]
        )
    row = {"a": a[0], "b": b[0], "judge": judge, "judge_is_side": side, "rubric_judge_mode": cfg.compare.judge_mode}
    row.update(summarize(verdicts, lengths, cfg.compare.length_tolerance))
    rubric_summary = summarize(rubric_verdicts, lengths, cfg.compare.length_tolerance)
    rubric_keys = ("win", "tie", "loss", "win_rate", "win_rate_ci", "lc_win_rate", "lc_win_rate_ci")
    row.update({f"rubric_{k}": rubric_summary[k] for k in (*rubric_keys, "length_matched_win_rate")})
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def judge_side(judge: str, a: str, b: str) -> str | None:
    """`a` or `b` when the judge is that side's model (same resolved folder), else None."""
    same = [Path(judge).resolve() == Path(x).resolve() for x in (a, b)]
    return "a" if same[0] else "b" if same[1] else None


def save_rows(path: Path, rows: list[dict], key: tuple[str, ...]) -> list[dict]:
    """Merge rows into the result file `path` (`{"rows": [...]}`), replacing rows with the same key."""
    old = read_json(path).get("rows", []) if path.exists() else []
    new_keys = {tuple(r[k] for k in key) for r in rows}
    merged = [r for r in old if tuple(r.get(k) for k in key) not in new_keys] + rows
    write_json(path, {"rows": merged})
    return merged


def fixed_judge(cfg: RunConfig, judge: str | None = None) -> str:
    """The model that judges every comparison: `judge` when given, else `compare.judge`, else M0."""
    return resolve_model(judge or cfg.compare.judge or cfg.model, cfg.cache_dir)


def compare_run(cfg: RunConfig, run: RunPaths, judge: str | None = None) -> list[dict]:
    """M_t vs M0 for every finished model of the run, every row judged by the same model (`fixed_judge`)."""
    models = run_models(cfg, run)
    base, rows = models[0], []
    judge_path = fixed_judge(cfg, judge)
    for label, path in models[1:]:
        log.info("compare: %s vs %s (judge %s)", label, base[0], judge_path)
        rows.append(head_to_head(cfg, run.compare_dir, (label, path), base, judge_path))
        save_rows(run.compare, rows[-1:], ("a", "b", "judge"))
        log_row(Tracker.of(cfg), "compare", rows[-1], label, f"_vs_{base[0]}")
    return rows


def log_row(tracker: Tracker, prefix: str, row: dict, label: str, suffix: str = "") -> None:
    """A result row of the model `label` to the tracker's `eval/` at step t for M_t: iter_k's model is
    M_{k+1}, so `iter_k` logs at k + 1; M0 and models from elsewhere at step 0."""
    step = int(label.split("_")[1]) + 1 if label.startswith("iter_") and label[5:].isdigit() else 0
    scalars = {f"{prefix}/{k}{suffix}": v for k, v in flatten(row).items()}
    tracker.log("eval", scalars, step)
