"""Stage 4: per prompt, the best-scored candidate (chosen) vs the worst-scored (rejected).

Reads  iter_K/prompts.jsonl, candidates.jsonl, judgements.jsonl
Writes iter_K/pairs.jsonl and iter_K/pairs/ (a `datasets` dataset on disk, with a dataset card
       README.md: counts, rules, the judge and its template's sha256), both in TRL's
       conversational preference format (`prompt`, `chosen`, `rejected` as message lists) with
       metadata: ids, scores, margin, token lengths.

Rules (`select_pair` is pure and unit-tested):
- candidates without a score (the judge gave none) are left out;
- a prompt with fewer than 2 scored candidates gives no pair (`fewer_than_2_scored`);
- best == worst, or a margin not above `min_margin`, gives no pair (`tie`);
- only an answer that ended (finish_reason `stop`) can be chosen, unless `allow_truncated_chosen`:
  the chosen is the best ended answer, and a prompt whose ended answers give no pair above the margin
  while a cut-off one would have is dropped (`truncated`). A cut-off answer may be the rejected one;
- the margin must clear the judge's own noise: margin > noise_z * sqrt(se_chosen^2 + se_rejected^2),
  where a candidate's `se` is the standard error of its mean score over its K judge samples
  (sample standard deviation / sqrt(parsed samples)), or, with one sample that has a digit
  distribution (`direct` mode, K = 1), that distribution's standard deviation; else 0. Below it the
  prompt gives no pair (`within_noise`);
- length control: among candidates within `tie_tolerance` of the best pick the shortest as
  chosen, among those within it of the worst the longest as rejected (otherwise the first
  best and the first worst in candidate order);
- a pair whose two responses are identical after tokenisation and truncation to the DPO
  `max_length` is dropped (`identical_after_truncation`).

Prompts with checkable instructions (their candidates carry the checkers' verdicts, `checks` in
judgements.jsonl) are paired by `pairs.source` (`select_checked_pair`):
- `judge`: as above, the verdicts unused (the paper);
- `checker`: chosen is a candidate following the most instructions (strict), rejected one following the
  fewest, when they differ; among equals the judge's score decides (then length control), and the noise
  band does not apply (the checkers are exact). When every candidate follows as many, the judge's pair;
- `judge_checked`: the judge's pair, but a candidate that fails an instruction another candidate follows is
  never chosen (no eligible candidate: `fails_instruction`).

The metrics also show how much the judge's scores follow answer length: the Pearson correlation of
score and token count over the scored candidates, and the mean chosen-minus-rejected token count.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from selfreward.artifacts import IterPaths, atomic_path, file_digest, project_file, read_jsonl, write_jsonl
from selfreward.cards import Lineage, dataset_card
from selfreward.config import JudgeConfig, PairsConfig
from selfreward.judge_text import MAX_SCORE, evaluator_directed
from selfreward.records import Candidate, Judgement, PreferencePair, Prompt, required_fields, to_row
from selfreward.runs import Stage

STAGE = Stage(
    "pairs", config=lambda cfg: (cfg.pairs, cfg.dpo.max_length), reads=("prompts", "candidates", "judgements")
)
"""Its fingerprint: pairs settings and DPO's max_length (identical-after-truncation), the three files; the
model whose tokenizer truncates is passed by the pipeline."""


@dataclass
class Scored:
    candidate_id: str
    text: str
    score: float
    num_tokens: int
    se: float = 0.0
    """Standard error of `score` from the judge's own samples (see the module docstring)."""
    ended: bool = True
    """False when the answer was cut at `responses.max_tokens` (finish_reason `length`)."""
    followed: list[bool] | None = None
    """For a prompt with checkable instructions: the checkers' strict verdict per instruction."""

    @property
    def passed(self) -> int:
        return sum(self.followed or [])


def select_pair(
    scored: list[Scored], cfg: PairsConfig, eligible: Callable[[Scored], bool] | None = None
) -> tuple[Scored, Scored] | str:
    """(chosen, rejected) for one prompt's scored candidates, or the reason there is no pair. Only candidates
    for which `eligible` holds may be chosen (default: all)."""
    if len(scored) < 2:
        return "fewer_than_2_scored"
    best = max(s.score for s in scored)
    worst = min(s.score for s in scored)
    if best - worst <= cfg.min_margin or best == worst:
        return "tie"
    choosable = scored if cfg.allow_truncated_chosen else [s for s in scored if s.ended]
    if eligible is not None:
        before = choosable
        choosable = [s for s in choosable if eligible(s)]
        if before and max(s.score for s in before) - worst > cfg.min_margin:
            if not choosable or max(s.score for s in choosable) - worst <= cfg.min_margin:
                return "fails_instruction"
    if not choosable or max(s.score for s in choosable) - worst <= cfg.min_margin:
        return "truncated"
    best_ended = max(s.score for s in choosable)
    top = [s for s in choosable if s.score >= best_ended - cfg.tie_tolerance]
    bottom = [s for s in scored if s.score <= worst + cfg.tie_tolerance]
    if cfg.length_control:
        chosen = min(top, key=lambda s: (s.num_tokens, -s.score))
        rejected = max(bottom, key=lambda s: (s.num_tokens, -s.score))
    else:
        chosen = next(s for s in choosable if s.score == best_ended)
        rejected = next(s for s in scored if s.score == worst)
    if chosen.candidate_id == rejected.candidate_id or chosen.score <= rejected.score:
        return "tie"
    if chosen.score - rejected.score <= noise_band(chosen, rejected, cfg.noise_z):
        return "within_noise"
    return chosen, rejected


def select_checked_pair(scored: list[Scored], cfg: PairsConfig) -> tuple[Scored, Scored] | str:
    """The pair of a prompt with checkable instructions under `cfg.source` (module docstring)."""
    if cfg.source == "judge_checked":
        followed = [any(col) for col in zip(*(s.followed or [] for s in scored), strict=True)]
        return select_pair(
            scored, cfg, lambda s: all(f or not other for f, other in zip(s.followed or [], followed, strict=True))
        )
    if cfg.source == "checker" and len(scored) >= 2:
        choosable = scored if cfg.allow_truncated_chosen else [s for s in scored if s.ended]
        most = max((s.passed for s in choosable), default=-1)
        fewest = min(s.passed for s in scored)
        if most > fewest:
            top = [s for s in choosable if s.passed == most]
            bottom = [s for s in scored if s.passed == fewest]
            best, worst = max(s.score for s in top), min(s.score for s in bottom)
            top = [s for s in top if s.score >= best - (cfg.tie_tolerance if cfg.length_control else 0)]
            bottom = [s for s in bottom if s.score <= worst + (cfg.tie_tolerance if cfg.length_control else 0)]
            if cfg.length_control:
                return min(top, key=lambda s: (s.num_tokens, -s.score)), max(
                    bottom, key=lambda s: (s.num_tokens, -s.score)
                )
            return top[0], bottom[0]
        judged = select_pair(scored, cfg)
        if isinstance(judged, tuple) and judged[0].passed < judged[1].passed:
            return "truncated"  # only a cut-off answer follows more: the judge's pair would invert the checker's
        return judged
    return select_pair(scored, cfg)


def noise_band(a: Scored, b: Scored, z: float) -> float:
    """z * sqrt(se_a^2 + se_b^2): the margin two candidates' scores need before it is not judge noise."""
    return z * math.sqrt(a.se**2 + b.se**2)


def score_se(samples: list[dict]) -> float:
    """Standard error of a candidate's mean score from its judge samples (rows of `JudgeSample`).

    Examples: scores [3, 4, 5] -> sd 1, se 1/sqrt(3) = 0.577; one sample with digit distribution
    [0, 0, .5, .5, 0, 0] -> mean 2.5, sd 0.5; one sampled-mode score -> 0 (nothing to estimate from)."""
    scores = [s["score"] for s in samples if s.get("score") is not None]
    if len(scores) >= 2:
        return statistics.stdev(scores) / math.sqrt(len(scores))
    probs = next((s.get("probs") for s in samples if s.get("score") is not None), None)
    if len(scores) == 1 and probs and len(probs) == 2:  # a pairwise comparison: Bernoulli on the 0-5 scale
        return MAX_SCORE * math.sqrt(probs[0] * probs[1])
    if len(scores) == 1 and probs:
        mean = sum(d * p for d, p in enumerate(probs))
        return math.sqrt(sum(p * (d - mean) ** 2 for d, p in enumerate(probs)))
    return 0.0


def make_pairs(
    prompts: list[dict],
    candidates: list[dict],
    judgements: list[dict],
    cfg: PairsConfig,
    identical: Callable[[str, str, str], bool] = lambda p, a, b: a == b,
) -> tuple[list[PreferencePair], dict[str, int]]:
    """Pairs for every prompt, and the count of prompts dropped per reason.

    `identical(prompt, a, b)` says whether two responses are the same as the trainer sees them.
    """
    judged = {j["candidate_id"]: j for j in judgements}
    by_prompt: dict[str, list[Scored]] = {p["prompt_id"]: [] for p in prompts}
    for c in candidates:
        j = judged.get(c["candidate_id"])
        if j is not None and j["score"] is not None and c["prompt_id"] in by_prompt:
            by_prompt[c["prompt_id"]].append(
                Scored(
                    c["candidate_id"],
                    c["text"],
                    j["score"],
                    c["num_tokens"],
                    se=score_se(j.get("samples") or []),
                    ended=c.get("finish_reason", "stop") != "length",
                    followed=(j.get("checks") or {}).get("strict"),
                )
            )
    pairs, dropped = [], {}
    for p in prompts:
        scored = by_prompt[p["prompt_id"]]
        checked = bool(p.get("instruction_id_list")) and all(s.followed is not None for s in scored)
        result = select_checked_pair(scored, cfg) if checked else select_pair(scored, cfg)
        if isinstance(result, tuple) and identical(p["text"], result[0].text, result[1].text):
            result = "identical_after_truncation"
        if isinstance(result, str):
            dropped[result] = dropped.get(result, 0) + 1
            continue
        chosen, rejected = result
        pairs.append(
            PreferencePair(
                prompt=[{"role": "user", "content": p["text"]}],
                chosen=[{"role": "assistant", "content": chosen.text}],
                rejected=[{"role": "assistant", "content": rejected.text}],
                prompt_id=p["prompt_id"],
                chosen_id=chosen.candidate_id,
                rejected_id=rejected.candidate_id,
                chosen_score=chosen.score,
                rejected_score=rejected.score,
                margin=chosen.score - rejected.score,
                chosen_tokens=chosen.num_tokens,
                rejected_tokens=rejected.num_tokens,
                noise_band=noise_band(chosen, rejected, cfg.noise_z),
                source=pair_source(chosen, rejected, cfg) if checked else "judge",
                chosen_passed=chosen.passed if checked else -1,
                rejected_passed=rejected.passed if checked else -1,
            )
        )
    return pairs, dropped


def pair_source(chosen: Scored, rejected: Scored, cfg: PairsConfig) -> str:
    """Who decided a checked prompt's pair: the checker when it ranked the two apart (`checker` source), else
    `judge_checked` or `judge` as configured."""
    if cfg.source == "checker" and chosen.passed > rejected.passed:
        return "checker"
    return "judge_checked" if cfg.source == "judge_checked" else "judge"


def length_bias(candidates: list[dict], judgements: list[dict], pairs: list[PreferencePair]) -> dict:
    """How much the scores follow length: Pearson r of score vs token count over the scored candidates
    (None with fewer than 3 or no spread), and the mean chosen-minus-rejected token count of the pairs."""
    scores = {j["candidate_id"]: j["score"] for j in judgements}
    xy = [
        (c["num_tokens"], scores[c["candidate_id"]]) for c in candidates if scores.get(c["candidate_id"]) is not None
    ]
    r = None
    if len(xy) >= 3 and len({x for x, _ in xy}) > 1 and len({y for _, y in xy}) > 1:
        r = statistics.correlation([float(x) for x, _ in xy], [float(y) for _, y in xy])
    diff = [p.chosen_tokens - p.rejected_tokens for p in pairs]
    return {
        "score_length_correlation": r,
        "mean_chosen_minus_rejected_tokens": sum(diff) / len(diff) if diff else None,
        "truncated_candidates": sum(c.get("finish_reason") == "length" for c in candidates),
    }


def directed_in_pairs(pairs: list[PreferencePair]) -> dict[str, int]:
    """How many chosen and how many rejected answers contain evaluator-directed text (`judge_text`): a judge
    that can be flattered picks such answers as chosen more often than as rejected."""
    return {
        "evaluator_directed_chosen": sum(1 for p in pairs if evaluator_directed(p.chosen[0]["content"])),
        "evaluator_directed_rejected": sum(1 for p in pairs if evaluator_directed(p.rejected[0]["content"])),
    }


def truncation_check(tokenizer, max_length: int) -> Callable[[str, str, str], bool]:
    """`identical` for make_pairs: same token ids once prompt + response is cut to max_length."""

    def identical(prompt: str, a: str, b: str) -> bool:
        messages = [{"role": "user", "content": prompt}]
        ids = []
        for response in (a, b):
            text = tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": response}], tokenize=False
            )
            ids.append(tokenizer(text, add_special_tokens=False)["input_ids"][:max_length])
        return ids[0] == ids[1]

    return identical


def run(
    cfg: PairsConfig,
    it: IterPaths,
    tokenizer,
    max_length: int,
    judge: JudgeConfig | None = None,
    lineage: Lineage | None = None,
) -> dict:
    """The stage: pairs.jsonl and pairs/ with its dataset card (`judge`: how the candidates were judged,
    `lineage`: by which model of which run)."""
    import datasets

    prompts = read_jsonl(it.prompts, required_fields(Prompt))
    candidates = read_jsonl(it.candidates, required_fields(Candidate))
    judgements = read_jsonl(it.judgements, required_fields(Judgement))
    pairs, dropped = make_pairs(prompts, candidates, judgements, cfg, truncation_check(tokenizer, max_length))
    rows = [to_row(p) for p in pairs]
    dataset = datasets.Dataset.from_list(rows) if rows else empty_pairs_dataset()
    n = len(pairs)
    metrics = {
        "pairs": n,
        "prompts": len(prompts),
        "prompts_without_pair": dropped,
        "ties_dropped": dropped.get("tie", 0),
        **length_bias(candidates, judgements, pairs),
        "mean_margin": sum(p.margin for p in pairs) / n if n else None,
        "mean_chosen_tokens": sum(p.chosen_tokens for p in pairs) / n if n else None,
        "mean_rejected_tokens": sum(p.rejected_tokens for p in pairs) / n if n else None,
        **directed_in_pairs(pairs),
    }
    card = pairs_card(cfg, judge or JudgeConfig(), lineage or Lineage("unknown", str(it.root.parent), 0, ""), metrics)
    with atomic_path(it.pairs_dataset) as tmp:
        dataset.save_to_disk(str(tmp), num_shards=1 if not rows else None)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    write_jsonl(it.pairs, rows)
    return metrics


def pairs_card(cfg: PairsConfig, judge: JudgeConfig, lineage: Lineage, metrics: dict) -> str:
    """The dataset card of pairs/: counts, the pairing rules, the judge (model, mode, K, template hash)."""
    counts = {k: metrics[k] for k in ("pairs", "prompts", "prompts_without_pair")}
    judged_by = {
        "model": lineage.parent,
        "mode": judge.mode,
        "samples": judge.samples,
        "temperature": judge.temperature,
        "template": judge.template,
        "template_sha256": file_digest(project_file(judge.template)),
    }
    rest = {k: v for k, v in metrics.items() if k not in counts}
    return dataset_card(lineage, judged_by, dataclasses.asdict(cfg), counts, rest)


def empty_pairs_dataset():
    import datasets

    message = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
    features = datasets.Features(
        {
            "prompt": message,
            "chosen": message,
            "rejected": message,
            "prompt_id": datasets.Value("string"),
            "chosen_id": datasets.Value("string"),
            "rejected_id": datasets.Value("string"),
            "chosen_score": datasets.Value("float64"),
            "rejected_score": datasets.Value("float64"),
            "margin": datasets.Value("float64"),
            "chosen_tokens": datasets.Value("int64"),
            "rejected_tokens": datasets.Value("int64"),
            "noise_band": datasets.Value("float64"),
            "source": datasets.Value("string"),
            "chosen_passed": datasets.Value("int64"),
            "rejected_passed": datasets.Value("int64"),
        }
    )
    # An arrow table with the schema: `from_list([], features=...)` loses the columns in datasets 5.2
    # ("Keys mismatch" on load), and saving needs num_shards=1 (see `run`).
    import pyarrow as pa

    return datasets.Dataset(pa.Table.from_pylist([], schema=features.arrow_schema))
