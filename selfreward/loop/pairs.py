"""Stage 4: per prompt, the best-scored candidate (chosen) vs the worst-scored (rejected).

Reads  iter_K/prompts.jsonl, candidates.jsonl, judgements.jsonl
Writes iter_K/pairs.jsonl and iter_K/pairs/ (a `datasets` dataset on disk), both in TRL's
       conversational preference format (`prompt`, `chosen`, `rejected` as message lists) with
       metadata: ids, scores, margin, token lengths.

Rules (`select_pair` is pure and unit-tested):
- candidates without a score (every judge sample failed to parse) are left out;
- a prompt with fewer than 2 scored candidates gives no pair (`fewer_than_2_scored`);
- best == worst, or a margin not above `min_margin`, gives no pair (`tie`);
- length control: among candidates within `tie_tolerance` of the best pick the shortest as
  chosen, among those within it of the worst the longest as rejected (otherwise the first
  best and the first worst in candidate order);
- a pair whose two responses are identical after tokenisation and truncation to the DPO
  `max_length` is dropped (`identical_after_truncation`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from selfreward.artifacts import IterPaths, atomic_path, read_jsonl, write_jsonl
from selfreward.config import PairsConfig
from selfreward.records import Candidate, Judgement, PreferencePair, Prompt, required_fields, to_row


@dataclass
class Scored:
    candidate_id: str
    text: str
    score: float
    num_tokens: int


def select_pair(scored: list[Scored], cfg: PairsConfig) -> tuple[Scored, Scored] | str:
    """(chosen, rejected) for one prompt's scored candidates, or the reason there is no pair."""
    if len(scored) < 2:
        return "fewer_than_2_scored"
    best = max(s.score for s in scored)
    worst = min(s.score for s in scored)
    if best - worst <= cfg.min_margin or best == worst:
        return "tie"
    top = [s for s in scored if s.score >= best - cfg.tie_tolerance]
    bottom = [s for s in scored if s.score <= worst + cfg.tie_tolerance]
    if cfg.length_control:
        chosen = min(top, key=lambda s: (s.num_tokens, -s.score))
        rejected = max(bottom, key=lambda s: (s.num_tokens, -s.score))
    else:
        chosen = next(s for s in scored if s.score == best)
        rejected = next(s for s in scored if s.score == worst)
    if chosen.candidate_id == rejected.candidate_id or chosen.score <= rejected.score:
        return "tie"
    return chosen, rejected


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
    scores = {j["candidate_id"]: j["score"] for j in judgements}
    by_prompt: dict[str, list[Scored]] = {p["prompt_id"]: [] for p in prompts}
    for c in candidates:
        score = scores.get(c["candidate_id"])
        if score is not None and c["prompt_id"] in by_prompt:
            by_prompt[c["prompt_id"]].append(Scored(c["candidate_id"], c["text"], score, c["num_tokens"]))
    pairs, dropped = [], {}
    for p in prompts:
        result = select_pair(by_prompt[p["prompt_id"]], cfg)
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
            )
        )
    return pairs, dropped


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


def run(cfg: PairsConfig, it: IterPaths, tokenizer, max_length: int) -> dict:
    import datasets

    prompts = read_jsonl(it.prompts, required_fields(Prompt))
    candidates = read_jsonl(it.candidates, required_fields(Candidate))
    judgements = read_jsonl(it.judgements, required_fields(Judgement))
    pairs, dropped = make_pairs(prompts, candidates, judgements, cfg, truncation_check(tokenizer, max_length))
    rows = [to_row(p) for p in pairs]
    dataset = datasets.Dataset.from_list(rows) if rows else _empty_dataset()
    with atomic_path(it.pairs_dataset) as tmp:
        dataset.save_to_disk(str(tmp))
    write_jsonl(it.pairs, rows)
    n = len(pairs)
    return {
        "pairs": n,
        "prompts_without_pair": dropped,
        "ties_dropped": dropped.get("tie", 0),
        "mean_margin": sum(p.margin for p in pairs) / n if n else None,
        "mean_chosen_tokens": sum(p.chosen_tokens for p in pairs) / n if n else None,
        "mean_rejected_tokens": sum(p.rejected_tokens for p in pairs) / n if n else None,
    }


def _empty_dataset():
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
        }
    )
    return datasets.Dataset.from_list([], features=features)
