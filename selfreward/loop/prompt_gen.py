"""Stage 1: the model writes new prompts (self-instruct), filtered for quality and novelty.

Reads  the seed pool (config `seed_data.instructions`) and, optionally, `prompts.jsonl` of
       earlier iterations of the run (passed in by the pipeline as a list of texts)
Writes iter_K/prompts.jsonl (kept), iter_K/prompts_rejected.jsonl (each with its reason)

Each request shows `few_shot` examples drawn from the pool in the template
`prompts/self_instruct.txt` and asks for the next task. In `completion` format the text is
completed raw and cut at the first newline (SmolLM2-135M writes novel tasks this way but
copies the examples when asked through its chat template); in `chat` format the same text is
sent as a user message with the assistant turn prefilled with `Task:`.

Filters, in order: empty, too_short, too_long, truncated (hit max_tokens), template_fragment,
not_text, duplicate (exact, case/space-insensitive), near_duplicate (ROUGE-L F1 with any pool
or already-kept prompt >= threshold). Rounds continue until `num_prompts` are kept or
`max_rounds` is reached.

Then `constraint_fraction` of the kept prompts (a seeded draw) get 1-3 checkable instructions from our
generator (`constraints.generator.add_constraints`) appended to their text; the row keeps the model's own
prompt as `base` and the instructions in IFEval's fields (`instruction_id_list`, `kwargs`). The few-shot
pool of later iterations takes the `base`, so the model keeps writing prompts of its own kind.
"""

from __future__ import annotations

import logging
import math
import random
import re

from rouge_score import rouge_scorer

from selfreward.artifacts import IterPaths, project_file, write_jsonl
from selfreward.config import PromptGenConfig
from selfreward.constraints.generator import add_constraints
from selfreward.generation import Generator, SamplingSpec, engine_settings
from selfreward.records import Prompt, RejectedPrompt, to_row
from selfreward.runs import Stage

log = logging.getLogger(__name__)

STAGE = Stage(
    "prompts",
    config=lambda cfg: (cfg.prompt_gen, engine_settings(cfg.engine)),
    files=lambda cfg: [cfg.prompt_gen.template, cfg.seed_data.instructions, cfg.prompt_gen.exclude, cfg.eval.prompts],
    writes=("prompts", "prompts_rejected"),
)
"""Its fingerprint: prompt_gen settings and the engine's, the template, seed pool and excluded prompt files; the
start model and the few-shot pool (earlier iterations' prompts) are passed by the pipeline."""

_TEMPLATE_FRAGMENTS = ("task:", "{examples}", "list of diverse tasks", "<|im_", "<|endoftext|>")
_LEADING = re.compile(r"^\s*(?:task\s*\d*\s*[:.)-]\s*|\d+\s*[.)]\s*|[-*]\s+)", re.IGNORECASE)


def one_line(text: str) -> str:
    return " ".join(text.split())


def clean(text: str) -> str:
    """The first line of a generation without list markers such as `Task:` or `3.`."""
    first = text.strip().split("\n", 1)[0]
    return _LEADING.sub("", first).strip()


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def check_text(text: str, finish_reason: str, cfg: PromptGenConfig) -> str | None:
    """The reason to reject a cleaned prompt on its own (before comparing with others), or None."""
    if not text:
        return "empty"
    if finish_reason == "length" and cfg.drop_truncated:
        return "truncated"
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    if any(f in text.lower() for f in _TEMPLATE_FRAGMENTS):
        return "template_fragment"
    letters = sum(ch.isalpha() for ch in text)
    if letters < 0.5 * len(text) or not text.isprintable():
        return "not_text"
    return None


class NoveltyFilter:
    """Exact and ROUGE-L near-duplicate checks against a growing set of prompts."""

    def __init__(self, existing: list[str], threshold: float) -> None:
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.threshold = threshold
        self.texts: list[str] = []
        self.normalised: set[str] = set()
        for t in existing:
            self.add(t)

    def add(self, text: str) -> None:
        self.texts.append(text)
        self.normalised.add(normalise(text))

    def check(self, text: str) -> tuple[str | None, str]:
        if normalise(text) in self.normalised:
            return "duplicate", ""
        best, best_text = 0.0, ""
        for other in self.texts:
            score = self.scorer.score(other, text)["rougeL"].fmeasure
            if score > best:
                best, best_text = score, other
        if best >= self.threshold:
            return "near_duplicate", f"ROUGE-L {best:.2f} with: {best_text[:120]}"
        return None, ""


def build_request(template: str, examples: list[str]) -> str:
    listing = "".join(f"Task: {one_line(e)}\n" for e in examples)
    return template.replace("{examples}", listing)


def generate_prompts(
    gen: Generator,
    cfg: PromptGenConfig,
    pool: list[str],
    iteration: int,
    seed: int = 0,
    excluded: list[str] | None = None,
) -> tuple[list[Prompt], list[RejectedPrompt]]:
    """Generate and filter until `cfg.num_prompts` are kept or `cfg.max_rounds` have run; a prompt that
    duplicates or nearly duplicates one of `excluded` (the evaluation prompts) is rejected (`eval_prompt`)."""
    if len(pool) < cfg.few_shot:
        raise ValueError(f"the seed pool has {len(pool)} prompts, fewer than few_shot={cfg.few_shot}")
    template = project_file(cfg.template).read_text()
    rng = random.Random(f"{seed}-{iteration}")
    novelty = NoveltyFilter(pool, cfg.similarity_threshold)
    held_out = NoveltyFilter(excluded or [], cfg.similarity_threshold)
    kept: list[Prompt] = []
    rejected: list[RejectedPrompt] = []
    for round_ in range(cfg.max_rounds):
        missing = cfg.num_prompts - len(kept)
        if missing <= 0:
            break
        requests = [
            build_request(template, rng.sample(pool, cfg.few_shot)) for _ in range(math.ceil(missing * cfg.oversample))
        ]
        if cfg.format == "chat":
            requests = [
                gen.render_chat(
                    [{"role": "user", "content": r.rstrip().removesuffix("Task:").rstrip()}], prefill="Task:"
                )
                for r in requests
            ]
        spec = SamplingSpec(
            n=1,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
            stop=["\n"],
            seed=seed * 1000 + round_,
        )
        outputs = gen.complete(requests, spec)
        for (out,) in outputs:
            text = clean(out.text)
            reason = check_text(text, out.finish_reason, cfg)
            detail = ""
            if reason is None:
                reason, detail = held_out.check(text)
                reason = "eval_prompt" if reason else None
            if reason is None:
                reason, detail = novelty.check(text)
            if reason is None and len(kept) < cfg.num_prompts:
                novelty.add(text)
                kept.append(Prompt(prompt_id=f"i{iteration}-p{len(kept)}", text=text, source="self-instruct"))
            elif reason is not None:
                rejected.append(RejectedPrompt(text=out.text, reason=reason, detail=detail))
        log.info(
            "prompt generation round %d: %d/%d kept, %d rejected",
            round_ + 1,
            len(kept),
            cfg.num_prompts,
            len(rejected),
        )
    if len(kept) < cfg.num_prompts:
        log.warning(
            "prompt generation kept %d of %d prompts after %d rounds", len(kept), cfg.num_prompts, cfg.max_rounds
        )
    return kept, rejected


def attach_constraints(prompts: list[Prompt], fraction: float, rng: random.Random, avoid: set[str]) -> None:
    """Give round(fraction * len(prompts)) of `prompts` (a seeded draw) checkable instructions, in place. A
    result equal to a text in `avoid` (normalised: the evaluation prompts) is drawn again."""
    chosen = rng.sample(range(len(prompts)), round(fraction * len(prompts)))
    for i in sorted(chosen):
        p = prompts[i]
        for _ in range(100):
            c = add_constraints(p.text, rng)
            if normalise(c.prompt) not in avoid:
                break
        else:  # pragma: no cover - would need 100 draws equal to evaluation prompts
            continue
        p.base, p.text = p.text, c.prompt
        p.instruction_id_list, p.kwargs = c.instruction_id_list, c.kwargs


def run(
    gen: Generator,
    cfg: PromptGenConfig,
    pool: list[str],
    it: IterPaths,
    iteration: int,
    seed: int = 0,
    excluded: list[str] | None = None,
) -> dict:
    kept, rejected = generate_prompts(gen, cfg, pool, iteration, seed, excluded)
    avoid = {normalise(t) for t in excluded or []}
    attach_constraints(kept, cfg.constraint_fraction, random.Random(f"constraints-{seed}-{iteration}"), avoid)
    write_jsonl(it.prompts_rejected, (to_row(r) for r in rejected))
    write_jsonl(it.prompts, (to_row(p) for p in kept))
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    return {
        "prompts_generated": len(kept) + len(rejected),
        "prompts_kept": len(kept),
        "prompts_rejected": len(rejected),
        "rejected_by_reason": reasons,
        "pool_size": len(pool),
        "prompts_with_constraints": sum(1 for p in kept if p.instruction_id_list),
    }
