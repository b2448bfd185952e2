"""Stage 4: per prompt, the best-scored candidate (chosen) vs the worst-scored (rejected).

Reads  iter_K/prompts.jsonl, candidates.jsonl, judgements.jsonl; anchors.jsonl (`pairs.rejected_from: initial`),
       meta_judgements.jsonl (`meta_judge.enabled`)
Writes iter_K/pairs.jsonl and iter_K/pairs/ (a `datasets` dataset on disk, with a dataset card
       README.md: counts, rules, the judge and its template's sha256), both in TRL's
       conversational preference format (`prompt`, `chosen`, `rejected` as message lists) with
       metadata: ids, scores, margin, token lengths; iter_K/judge_pairs.jsonl (`meta_judge.enabled`: the
       judge-role pairs, which join pairs/ with `kind: judge`; the answer pairs there are `kind: answer`).

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

Anchored rejection (`pairs.rejected_from: initial`, from iteration 2): each prompt's rejected answer is picked by
the same rules from the run's first model's answers (anchors.jsonl, judged with the candidates by the current
judge), its chosen answer from the current model's; a prompt none of whose anchors was scored gives no pair
(`no_scored_anchor`).

With `pairs.exclude_directed` an answer with text addressed to the evaluator (`judge_text.evaluator_directed`) is
never chosen (it may still be rejected); a prompt whose answers all have it gives no pair (`evaluator_directed`).

Judge-role pairs (`meta_judge.enabled`, `judge_pairs`): the meta-judge's preferred judgement of a candidate is
chosen, the other rejected, the prompt is the judge prompt; at most `meta_judge.share` of the DPO data.

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
from selfreward.config import JudgeConfig, MetaJudgeConfig, PairsConfig
from selfreward.judge_text import MAX_SCORE, evaluator_directed, load_template, render_judge_prompt
from selfreward.records import Candidate, Judgement, JudgePair, PreferencePair, Prompt, required_fields, to_row
from selfreward.runs import Stage

STAGE = Stage(
    "pairs",
    config=lambda cfg: (cfg.pairs, cfg.dpo.max_length),
    reads=("prompts", "candidates", "judgements"),
    writes=("pairs", "pairs_dataset", "judge_pairs"),
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
    scored: list[Scored],
    cfg: PairsConfig,
    eligible: Callable[[Scored], bool] | None = None,
    against: list[Scored] | None = None,
) -> tuple[Scored, Scored] | str:
    """(chosen, rejected) for one prompt's scored candidates, or the reason there is no pair. Only candidates
    for which `eligible` holds may be chosen (default: all). `against`: the rejected answer is picked from these
    (anchored rejection: the initial model's answers) instead of from `scored`."""
    pool = scored if against is None else against
    if (len(scored) < 2 and against is None) or not scored or not pool:
        return "fewer_than_2_scored"
    best = max(s.score for s in scored)
    worst = min(s.score for s in pool)
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
    bottom = [s for s in pool if s.score <= worst + cfg.tie_tolerance]
    if cfg.length_control:
        chosen = min(top, key=lambda s: (s.num_tokens, -s.score))
        rejected = max(bottom, key=lambda s: (s.num_tokens, -s.score))
    else:
        chosen = next(s for s in choosable if s.score == best_ended)
        rejected = next(s for s in pool if s.score == worst)
    if chosen.candidate_id == rejected.candidate_id or chosen.score <= rejected.score:
        return "tie"
    if chosen.score - rejected.score <= noise_band(chosen, rejected, cfg.noise_z):
        return "within_noise"
    return chosen, rejected


def select_checked_pair(
    scored: list[Scored], cfg: PairsConfig, against: list[Scored] | None = None
) -> tuple[Scored, Scored] | str:
    """The pair of a prompt with checkable instructions under `cfg.source` (module docstring); `against` as in
    `select_pair`."""
    pool = scored if against is None else against
    if cfg.source == "judge_checked":
        followed = [any(col) for col in zip(*(s.followed or [] for s in scored), strict=True)]
        return select_pair(
            scored,
            cfg,
            lambda s: all(f or not other for f, other in zip(s.followed or [], followed, strict=True)),
            against,
        )
    if cfg.source == "checker" and pool and (len(scored) >= 2 or against is not None):
        choosable = scored if cfg.allow_truncated_chosen else [s for s in scored if s.ended]
        most = max((s.passed for s in choosable), default=-1)
        fewest = min(s.passed for s in pool)
        if most > fewest:
            top = [s for s in choosable if s.passed == most]
            bottom = [s for s in pool if s.passed == fewest]
            best, worst = max(s.score for s in top), min(s.score for s in bottom)
            top = [s for s in top if s.score >= best - (cfg.tie_tolerance if cfg.length_control else 0)]
            bottom = [s for s in bottom if s.score <= worst + (cfg.tie_tolerance if cfg.length_control else 0)]
            if cfg.length_control:
                return min(top, key=lambda s: (s.num_tokens, -s.score)), max(
                    bottom, key=lambda s: (s.num_tokens, -s.score)
                )
            return top[0], bottom[0]
        judged = select_pair(scored, cfg, against=against)
        if isinstance(judged, tuple) and judged[0].passed < judged[1].passed:
            return "truncated"  # only a cut-off answer follows more: the judge's pair would invert the checker's
        return judged
    return select_pair(scored, cfg, against=against)


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
    anchors: frozenset[str] = frozenset(),
) -> tuple[list[PreferencePair], dict[str, int]]:
    """Pairs for every prompt, and the count of prompts dropped per reason.

    `identical(prompt, a, b)` says whether two responses are the same as the trainer sees them. `anchors`: ids of
    candidates (in `candidates`) that are the initial model's answers (`pairs.rejected_from: initial`): a prompt
    that has them takes its rejected answer from them and its chosen answer from the others.
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
        against = [s for s in scored if s.candidate_id in anchors] or None
        if against is not None:
            scored = [s for s in scored if s.candidate_id not in anchors]
        no_anchor = bool(anchors) and against is None
        flagged = bool(scored) and cfg.exclude_directed and any(evaluator_directed(s.text) for s in scored)
        if flagged and not no_anchor:  # an answer that addresses the evaluator may be rejected, never chosen
            against = against or scored
            scored = [s for s in scored if not evaluator_directed(s.text)]
        if no_anchor:
            result: tuple[Scored, Scored] | str = "no_scored_anchor"
        elif flagged and not scored:
            result = "evaluator_directed"
        elif checked:
            result = select_checked_pair(scored, cfg, against)
        else:
            result = select_pair(scored, cfg, against=against)
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


def judge_pairs(
    prompts: list[dict],
    candidates: list[dict],
    judgements: list[dict],
    meta: list[dict],
    template: str,
    answer_pairs: int,
    share: float,
) -> tuple[list[JudgePair], dict[str, int]]:
    """Judge-role pairs from the meta-judge's verdicts (`meta_judgements.jsonl` rows): the judge prompt of the
    candidate, the preferred judgement as chosen, the other as rejected; at most `share` of all DPO pairs
    (`answer_pairs` answer pairs + these: floor(share * answer_pairs / (1 - share))), the most consistent first.
    Also the count of candidates that gave none, by reason (the meta-judge's drops, and `share_cap`).

    Example: 30 answer pairs at share 0.15 -> at most floor(0.15 * 30 / 0.85) = 5 judge pairs (5 of 35 = 14%)."""
    texts = {p["prompt_id"]: p["text"] for p in prompts}
    answers = {c["candidate_id"]: c["text"] for c in candidates}
    samples = {j["candidate_id"]: j.get("samples") or [] for j in judgements}
    dropped: dict[str, int] = {}
    made = []
    for m in meta:
        if m.get("dropped") or m.get("preferred") is None:
            reason = m.get("dropped") or "inconsistent"
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        a, b = m["sample_a"], m["sample_b"]
        chosen, rejected = (a, b) if m["preferred"] == a else (b, a)
        judged = samples[m["candidate_id"]]
        p_chosen_first = m["p_a_first"] if chosen == a else 1 - m["p_a_first"]
        p_chosen_second = 1 - m["p_a_second"] if chosen == a else m["p_a_second"]
        prompt = render_judge_prompt(template, texts[m["prompt_id"]], answers[m["candidate_id"]])
        made.append(
            JudgePair(
                prompt=[{"role": "user", "content": prompt}],
                chosen=[{"role": "assistant", "content": judged[chosen]["text"]}],
                rejected=[{"role": "assistant", "content": judged[rejected]["text"]}],
                prompt_id=m["prompt_id"],
                candidate_id=m["candidate_id"],
                chosen_sample=chosen,
                rejected_sample=rejected,
                chosen_score=judged[chosen]["score"],
                rejected_score=judged[rejected]["score"],
                consistency=min(p_chosen_first, p_chosen_second),
            )
        )
    cap = len(made) if share >= 1 else math.floor(share * answer_pairs / (1 - share) + 1e-9)
    made.sort(key=lambda j: (-j.consistency, j.candidate_id))
    if len(made) > cap:
        dropped["share_cap"] = len(made) - cap
    return made[:cap], dropped


def dataset_rows(pairs: list[PreferencePair], judge_role: list[JudgePair]) -> list[dict]:
    """The DPO data (pairs/): answer pairs and judge-role pairs in one table, told apart by `kind`."""
    rows = [{**to_row(p), "kind": "answer"} for p in pairs]
    for j in judge_role:
        rows.append(
            {
                "prompt": j.prompt,
                "chosen": j.chosen,
                "rejected": j.rejected,
                "prompt_id": j.prompt_id,
                "chosen_id": f"{j.candidate_id}#j{j.chosen_sample}",
                "rejected_id": f"{j.candidate_id}#j{j.rejected_sample}",
                "chosen_score": float(j.chosen_score),
                "rejected_score": float(j.rejected_score),
                "margin": 0.0,
                "chosen_tokens": -1,
                "rejected_tokens": -1,
                "noise_band": 0.0,
                "source": "meta_judge",
                "chosen_passed": -1,
                "rejected_passed": -1,
                "kind": "judge",
            }
        )
    return rows


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
    meta_judge: MetaJudgeConfig | None = None,
) -> dict:
    """The stage: pairs.jsonl and pairs/ with its dataset card (`judge`: how the candidates were judged,
    `lineage`: by which model of which run). With `pairs.rejected_from: initial` the rejected answers come from
    anchors.jsonl (when the iteration has one); with `meta_judge.enabled` the judge-role pairs from
    meta_judgements.jsonl join the DPO data (judge_pairs.jsonl, `kind: judge` in pairs/)."""
    import datasets

    judge = judge or JudgeConfig()
    prompts = read_jsonl(it.prompts, required_fields(Prompt))
    candidates = read_jsonl(it.candidates, required_fields(Candidate))
    anchored = cfg.rejected_from == "initial" and it.anchors.exists()
    anchors = read_jsonl(it.anchors, required_fields(Candidate)) if anchored else []
    judgements = read_jsonl(it.judgements, required_fields(Judgement))
    pairs, dropped = make_pairs(
        prompts,
        candidates + anchors,
        judgements,
        cfg,
        truncation_check(tokenizer, max_length),
        frozenset(a["candidate_id"] for a in anchors),
    )
    judge_role: list[JudgePair] = []
    judge_dropped: dict[str, int] = {}
    if meta_judge is not None and meta_judge.enabled:
        meta = read_jsonl(it.meta_judgements)
        template = load_template(judge.template)
        judge_role, judge_dropped = judge_pairs(
            prompts, candidates, judgements, meta, template, len(pairs), meta_judge.share
        )
        write_jsonl(it.judge_pairs, (to_row(j) for j in judge_role))
    rows = dataset_rows(pairs, judge_role)
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
        "rejected_from": "initial" if anchored else "current",
    }
    if meta_judge is not None and meta_judge.enabled:
        metrics["judge_pairs"] = len(judge_role)
        metrics["judge_pair_share"] = len(judge_role) / (n + len(judge_role)) if n + len(judge_role) else None
        metrics["candidates_without_judge_pair"] = judge_dropped
    card = pairs_card(cfg, judge, lineage or Lineage("unknown", str(it.root.parent), 0, ""), metrics)
    with atomic_path(it.pairs_dataset) as tmp:
        dataset.save_to_disk(str(tmp), num_shards=1 if not rows else None)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    write_jsonl(it.pairs, (to_row(p) for p in pairs))
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
            "kind": datasets.Value("string"),
        }
    )
    # An arrow table with the schema: `from_list([], features=...)` loses the columns in datasets 5.2
    # ("Keys mismatch" on load), and saving needs num_shards=1 (see `run`).
    import pyarrow as pa

    return datasets.Dataset(pa.Table.from_pylist([], schema=features.arrow_schema))
