"""Stage 3: the model judges its own candidates (LLM-as-a-Judge, additive 5-point rubric).

Reads  iter_K/prompts.jsonl, iter_K/candidates.jsonl
Writes iter_K/judgements.jsonl: per candidate, K judge samples (raw text, parsed score or the
       parse error) and their mean.

The judge prompt is `prompts/judge.txt` (our wording of the rubric of Yuan et al. 2024).
Three modes (config `judge.mode`):
- `sampled`: the paper's method: sample K judgements, parse the final `Score: N` line of each.
  A judgement that does not parse is kept with its raw text and excluded from the mean; a candidate
  needs at least ceil(K/2) parsed samples to be scored (else its score is None), so one lucky
  sample of K never stands for the judge's verdict.
- `probabilities`: sample K justifications (stopped before `Score`), prefill `Score: ` and take
  the expected value of the next-token distribution over the digits 0-5.
- `direct`: prefill `Score: ` right after the judge prompt, no justification: one forward pass per
  candidate and one sample (K is not used).
In both probability modes a sample records `digit_mass`, the probability the model put on the six
digit tokens at all (softmax over the whole vocabulary); below `judge.min_digit_mass` the sample is
unscored (`low_digit_mass`): a model that would not have answered with a digit gets no score.

The response cannot score itself: the score is parsed from the judge's output only, and what is
embedded in a judge (or comparison) prompt goes through `sanitize`. Both read text through the same
`normalize` (NFKC, invisible characters removed, look-alike letters of the keywords folded to Latin), and
`sanitize` neutralises every match of the parser's own score and verdict regexes (plus looser keys:
spaced out, mid-line, colon look-alikes), the template's tags (also fullwidth, HTML-escaped or
unclosed) and chat special tokens written as text (`<|im_end|>` -> `<| im_end |>`), until none is left.
So an embedded text can neither close its section, nor end its chat turn, nor hand a judge that copies
it a `Score:` or `Better answer:` line: parse_score(sanitize(x)) finds no score for any x. Placeholders
are filled in one pass, so a `{response}` inside an instruction stays text.

`judge_texts()` is the one code path used by the loop and by judge evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
from collections.abc import Iterable

from selfreward.artifacts import IterPaths, project_file, read_jsonl, write_jsonl
from selfreward.config import ConfigError, JudgeConfig
from selfreward.constraints.agreement import judge_checker_agreement
from selfreward.constraints.checkers import check_prompt
from selfreward.generation import Generator, SamplingSpec
from selfreward.records import Candidate, ConstraintChecks, Judgement, JudgeSample, Prompt, required_fields, to_row
from selfreward.stats import mean

log = logging.getLogger(__name__)

SCORE_PREFILL = "Score: "
PROBABILITY_CHUNK = 32
"""Probabilities mode: conversations whose justifications are sampled, then scored, together."""
MAX_SCORE = 5
DIGIT_ERROR = "low_digit_mass"

# ---- What embedded text must not contain. Each line a judge may be read by is defined once, as a
# "key" (the words and the colon) and the line the parser reads. `sanitize` neutralises every match of
# the parser's own regexes (and of looser keys) after the same `normalize` the parser applies, so a judge
# that copies embedded text cannot produce a line the parser reads.

# A score line: optional markdown around "Score", a colon, a number, optionally "/5" or "out of 5".
_SCORE_KEY = r"score[ \t*_]*[:：]"
_SCORE_LINE = re.compile(
    rf"^[ \t>*_#-]*{_SCORE_KEY}[ \t*_]*(-?\d+(?:\.\d+)?)(?![\d⁄])[ \t*_]*(?:/[ \t]*5|out of 5)?",
    re.IGNORECASE | re.MULTILINE,
)
# A comparison verdict, `Better answer: A` (compare.py prefills `Better answer:` and reads the next token).
_VERDICT_KEY = r"better[ \t*_]*answer[ \t*_]*[:：]"
_VERDICT_LINE = re.compile(rf"^[ \t>*_#-]*{_VERDICT_KEY}[ \t*_]*([ab])\b", re.IGNORECASE | re.MULTILINE)


def _spaced(word: str) -> str:
    """A regex for `word` with at most one separator between its letters: "S c o r e", "S-c-o-r-e"."""
    return r"[\s.*_~`-]?".join(word)


# What `sanitize` neutralises: either key anywhere (a judge may copy part of a line), also spaced out, with
# any markdown or whitespace before a colon, a colon look-alike or an HTML-escaped colon. Every match of
# _SCORE_KEY and _VERDICT_KEY is a match of this.
_KEY = re.compile(
    rf"(?:{_spaced('score')}|{_spaced('better')}[\s*_~`-]*{_spaced('answer')})[\s*_~`]*"
    r"(?P<colon>[:：꞉∶˸׃︓﹕]|&colon;|&#0*58;|&#x0*3a;)",
    re.IGNORECASE,
)
# The template's tags, with any spacing, case, angle-bracket look-alike or HTML escape, closed or not.
_TAG = re.compile(
    r"(?:[<‹〈⟨❮❬]|&lt;|&#0*60;|&#x0*3c;)\s*(/?)\s*(request|response(?:[ _-]?[ab])?)"
    r"(?:\s*(?:[>›〉⟩❯❭]|&gt;|&#0*62;|&#x0*3e;))?",
    re.IGNORECASE,
)
# Chat special tokens written out as text (the tokenizer would parse them as the token and the text could
# end its turn): ChatML-style `<|im_end|>`, `<|eot_id|>`; named `<s>`, `</s>`, `<start_of_turn>`,
# `<jupyter_output>` (any `<a_b>` with an underscore); Llama-2 `[INST]`, `<<SYS>>`.
_SPECIAL_TOKEN = re.compile(
    r"<\|(?P<chatml>[^\s|<>]{1,64})\|>"
    r"|<(?P<named>/?(?:s|unk|pad|bos|eos|mask|sep|cls|filename|reponame|[a-z]+(?:_[a-z]+)+))>"
    r"|\[(?P<inst>/?INST)\]|<<(?P<sys>/?SYS)>>",
    re.IGNORECASE,
)

# Characters that render as nothing: besides category Cf (zero-width spaces and joiners, bidi overrides,
# soft hyphen, tag characters), the combining grapheme joiner, Hangul fillers, Khmer invisible vowels and
# variation selectors.
_INVISIBLE = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0\ufe00-\ufe0f\U000e0100-\U000e01ef]")
_NEWLINE = re.compile("\r\n?|[\x0b\x0c\x85\u2028\u2029]")
# Look-alikes (Cyrillic, Greek, Armenian, Cherokee, small capitals) of the letters of the keywords below.
_LOOKALIKES = {
    "a": "\u0430\u03b1\u0251\u1d00",  # а α ɑ ᴀ
    "A": "\u0410\u0391\u13aa",  # А Α Ꭺ
    "b": "\u042c\u044c\u0299",  # Ь ь ʙ
    "B": "\u0412\u0392\u13f4",  # В Β Ᏼ
    "c": "\u0441\u03f2\u1d04",  # с ϲ ᴄ
    "C": "\u0421\u03f9\u13df",  # С Ϲ Ꮯ
    "e": "\u0435\u04bd\u03b5\u1d07",  # е ҽ ε ᴇ
    "E": "\u0415\u0395\u13ac",  # Е Ε Ꭼ
    "n": "\u043f\u0578\u0274",  # п ո ɴ
    "N": "\u039d",  # Ν
    "o": "\u043e\u03bf\u0585\u1d0f",  # о ο օ ᴏ
    "O": "\u041e\u039f\u0555",  # О Ο Օ
    "p": "\u0440\u03c1\u1d18",  # р ρ ᴘ
    "P": "\u0420\u03a1\u13e2",  # Р Ρ Ꮲ
    "q": "\u051b",  # ԛ
    "Q": "\u051a",  # Ԛ
    "r": "\u0433\u0280\u1d26",  # г ʀ ᴦ
    "R": "\u13a1",  # Ꭱ
    "s": "\u0455\ua731",  # ѕ ꜱ
    "S": "\u0405\u13da",  # Ѕ Ꮪ
    "t": "\u0442\u03c4\u1d1b",  # т τ ᴛ
    "T": "\u0422\u03a4\u13a2",  # Т Τ Ꭲ
    "u": "\u03c5\u057d\u1d1c",  # υ ս ᴜ
    "U": "\u054d",  # Ս
    "w": "\u051d\u03c9\u1d21",  # ԝ ω ᴡ
    "W": "\u051c\u13b3",  # Ԝ Ꮃ
}
_CONFUSABLES = str.maketrans({c: latin for latin, chars in _LOOKALIKES.items() for c in chars})
_KEYWORDS = ("score", "better", "answer", "request", "response")
_WORD = re.compile(r"[^\W\d_]+")


def normalize(text: str) -> str:
    """What both `sanitize` and the parsers read: NFKC (fullwidth and styled letters, digits and brackets
    become ASCII: "Ｓｃｏｒｅ：５" -> "Score:5"; superscript and subscript digits and signs and vulgar
    fractions are kept, x² is not x2), invisible characters removed (see _INVISIBLE), every line break
    written `\\n`, and look-alike letters folded to Latin in a word that then contains a keyword or is the
    letter A or B ("Scоre" with a Cyrillic о -> "Score"); other words, Russian or Greek text included, are
    kept as they are. Idempotent: normalize(normalize(x)) == normalize(x)."""
    text = _strip_invisible("".join(_nfkc(c) for c in _strip_invisible(text)))
    text = _WORD.sub(_fold_word, _NEWLINE.sub("\n", text))
    return unicodedata.normalize("NFC", text)  # a folded letter may compose with a following accent


def _nfkc(c: str) -> str:
    kept = unicodedata.decomposition(c).startswith(("<super>", "<sub>", "<fraction>"))
    return c if kept and not unicodedata.category(c).startswith("L") else unicodedata.normalize("NFKC", c)


def _strip_invisible(text: str) -> str:
    return _INVISIBLE.sub("", "".join(c for c in text if unicodedata.category(c) != "Cf"))


def _fold_word(m: re.Match[str]) -> str:
    folded = m.group().translate(_CONFUSABLES)
    low = folded.lower()
    return folded if folded in ("A", "B") or any(k in low for k in _KEYWORDS) else m.group()


def parse_score(text: str) -> tuple[int | None, str | None]:
    """Parse the judge's output: the last `Score: N` line gives N (an integer 0-5), read after `normalize`.

    Returns (score, None) or (None, error) with error one of no_score_line, not_an_integer,
    out_of_range. Only the judge's own output may be passed here, never the prompt.
    """
    matches = _SCORE_LINE.findall(normalize(text))
    if not matches:
        return None, "no_score_line"
    value = float(matches[-1])
    if value != int(value):
        return None, "not_an_integer"
    if not 0 <= value <= MAX_SCORE:
        return None, "out_of_range"
    return int(value), None


def parse_verdict(text: str) -> str | None:
    """The letter of the last `Better answer: A` / `: B` line, after `normalize`, or None. The comparison
    reads its verdict from next-token probabilities instead; this is the line `sanitize` keeps out of answers."""
    matches = _VERDICT_LINE.findall(normalize(text))
    return matches[-1].upper() if matches else None


def sanitize(text: str, special_tokens: Iterable[str] = ()) -> str:
    """`normalize(text)` with everything neutralised that could let embedded text escape its section, end
    its chat turn, or hand the judge a score or verdict line to copy:
    - the template's tags -> brackets: `</response>` -> `[/response]`;
    - special tokens spaced out: `<|im_end|>` -> `<| im_end |>`, `<s>` -> `< s >`, and so any text in
      `special_tokens` (e.g. a tokenizer's `all_special_tokens`);
    - the colon of every score or verdict key -> ` -`: `**Score**: 5` -> `**Score** - 5`.
    Repeated until nothing is left, so parse_score(sanitize(x)) and parse_verdict(sanitize(x)) find nothing,
    for any x; other text is kept as `normalize` writes it."""
    tokens = sorted(
        {t for t in special_tokens if len(t) > 2 and not any(c.isspace() for c in t)}, key=len, reverse=True
    )
    clean = normalize(text)
    while _forbidden(clean, tokens):
        clean = normalize(_neutralise(clean, tokens))
    return clean


def _forbidden(text: str, tokens: list[str]) -> bool:
    patterns = (_SCORE_LINE, _VERDICT_LINE, _KEY, _TAG, _SPECIAL_TOKEN)
    return any(p.search(text) for p in patterns) or any(t in text for t in tokens)


def _neutralise(text: str, tokens: list[str]) -> str:
    text = _SPECIAL_TOKEN.sub(_space_token, text)
    for token in tokens:  # longest first: a token inside another is spaced out after it
        text = text.replace(token, f"{token[0]} {token[1:-1]} {token[-1]}")
    text = _TAG.sub(lambda m: f"[{m.group(1)}{m.group(2)}]", text)
    return _KEY.sub(lambda m: m.group()[: m.start("colon") - m.start()] + " -", text)


def _space_token(m: re.Match[str]) -> str:
    if m.group("chatml"):
        return f"<| {m.group('chatml')} |>"
    if m.group("named"):
        return f"< {m.group('named')} >"
    if m.group("inst"):
        return f"[ {m.group('inst')} ]"
    return f"<< {m.group('sys')} >>"


def read_template(path: str, fields: tuple[str, ...]) -> str:
    """The template at `path` (a config path, see `project_file`), which must contain every placeholder of
    `fields`; ConfigError naming the file otherwise."""
    file = project_file(path)
    try:
        template = file.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the template file {file} ({e.strerror or e})") from None
    for field in fields:
        if field not in template:
            raise ConfigError(f"{path}: the template has no {field} placeholder")
    return template


def fill_template(template: str, values: dict[str, str]) -> str:
    """Every placeholder (a key of `values`, e.g. "{response}") replaced in one pass: a filled-in text is
    never searched for placeholders, so "{response}" written in an instruction stays as written. Not
    str.format: the texts may contain braces."""
    placeholder = re.compile("|".join(re.escape(k) for k in sorted(values, key=len, reverse=True)))
    return placeholder.sub(lambda m: values[m.group()], template)


def load_template(path: str) -> str:
    """The judge template (`judge.template`): ConfigError if missing or without {instruction} or {response}."""
    return read_template(path, ("{instruction}", "{response}"))


def render_judge_prompt(template: str, instruction: str, response: str, special_tokens: Iterable[str] = ()) -> str:
    """The judge prompt: the template with both texts sanitised (`sanitize`) and filled in one pass."""
    return fill_template(
        template,
        {"{instruction}": sanitize(instruction, special_tokens), "{response}": sanitize(response, special_tokens)},
    )


def digit_token_ids(gen: Generator, prefill: str = SCORE_PREFILL) -> list[int]:
    """Token ids of the digits 0-5 as the tokenizer writes them right after `prefill`."""
    return choice_token_ids(gen, prefill, [str(d) for d in range(MAX_SCORE + 1)])


def choice_token_ids(gen: Generator, prefill: str, choices: list[str]) -> list[int]:
    """Token id of each choice as the tokenizer writes it right after `prefill` (one token each)."""
    base = gen.encode(prefill)
    ids = []
    for choice in choices:
        full = gen.encode(prefill + choice)
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise ValueError(f"the tokenizer does not write {prefill + choice!r} as the prefill plus one token")
        ids.append(full[-1])
    return ids


def judge_texts(gen: Generator, cfg: JudgeConfig, items: list[tuple[str, str]], seed: int = 0) -> list[Judgement]:
    """Judge (instruction, response) pairs; returns one Judgement per item (ids left empty)."""
    template = load_template(cfg.template)
    conversations = [[{"role": "user", "content": render_judge_prompt(template, q, r)}] for q, r in items]
    spec = SamplingSpec(
        n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed
    )
    # A judge prompt longer than the context cannot be judged: its samples are failures (`too_long`).
    fits = [gen.fits(gen.render_chat(conv), cfg.max_tokens + 2) for conv in conversations]
    if not all(fits):
        log.warning(
            "judge: %d of %d judge prompts do not fit in the context; left unscored", fits.count(False), len(fits)
        )
    kept = [conv for conv, ok in zip(conversations, fits, strict=True) if ok]
    judged = iter(_judge_samples(gen, cfg, kept, spec) if kept else [])
    all_samples = [
        next(judged) if ok else [JudgeSample("", None, "too_long") for _ in range(cfg.samples)] for ok in fits
    ]
    need = min_parsed(cfg)
    judgements = []
    for samples in all_samples:
        mean, parsed = candidate_score([s.score for s in samples], need)
        judgements.append(Judgement("", "", mean, parsed, samples))
    return judgements


def candidate_score(sample_scores: list[float | None], need: int) -> tuple[float | None, int]:
    """A candidate's score from its samples' scores (None: unscored sample): their mean when at least `need`
    parsed (`min_parsed`), else None; and how many parsed."""
    parsed = [x for x in sample_scores if x is not None]
    return (sum(parsed) / len(parsed) if len(parsed) >= need else None), len(parsed)


def min_parsed(cfg: JudgeConfig) -> int:
    """Parsed samples a candidate needs to be scored: ceil(K/2) in sampled mode, else 1 (a probability
    mode's sample is unscored only when its digit mass is too low, which says the same of every sample)."""
    return -(-cfg.samples // 2) if cfg.mode == "sampled" else 1


def _judge_samples(
    gen: Generator, cfg: JudgeConfig, conversations: list[list[dict[str, str]]], spec: SamplingSpec
) -> list[list[JudgeSample]]:
    """K judge samples per conversation: parsed `Score:` lines, or digit probabilities after `Score: `."""
    if cfg.mode == "sampled":
        outputs = gen.chat(conversations, spec)
        return [[JudgeSample(o.text, *parse_score(o.text)) for o in outs] for outs in outputs]
    digits = digit_token_ids(gen)
    if cfg.mode == "direct":
        probs = gen.token_probs([gen.render_chat(conv, SCORE_PREFILL) for conv in conversations], digits)
        return [[digit_sample("", p, cfg.min_digit_mass)] for p in probs]
    spec.stop = ["Score:", "score:", "SCORE:"]
    all_samples = []
    # In chunks, so that vLLM still holds each judge prompt in its prefix cache when the scoring pass
    # re-reads it (all at once, a 4 GiB cache had evicted most of them: the second pass took as long as
    # the first).
    for start in range(0, len(conversations), PROBABILITY_CHUNK):
        chunk = conversations[start : start + PROBABILITY_CHUNK]
        chunk_spec = dataclasses.replace(spec, seed=None if spec.seed is None else spec.seed + start)
        outputs = gen.chat(chunk, chunk_spec)
        prefixed = [
            gen.render_chat(conv) + o.text.rstrip() + ("\n" if o.text.strip() else "") + SCORE_PREFILL
            for conv, outs in zip(chunk, outputs, strict=True)
            for o in outs
        ]
        probs = iter(gen.token_probs(prefixed, digits))
        for outs in outputs:
            all_samples.append([digit_sample(o.text, next(probs), cfg.min_digit_mass) for o in outs])
    return all_samples


def digit_sample(text: str, raw: list[float], min_mass: float) -> JudgeSample:
    """A probability-mode sample from P(digit d) over the whole vocabulary, d = 0..5: the score is the
    expected digit under the distribution renormalised over the six digits, kept only when their mass
    (the sum of `raw`) is at least `min_mass`.

    Example: raw [0, 0, 0.1, 0.3, 0.1, 0] -> mass 0.5, probs [0, 0, 0.2, 0.6, 0.2, 0], score 3.0."""
    mass = sum(raw)
    probs = [p / mass for p in raw] if mass > 0 else list(raw)
    if mass <= 0 or mass < min_mass:
        return JudgeSample(text, None, DIGIT_ERROR, probs, mass)
    return JudgeSample(text, sum(d * p for d, p in enumerate(probs)), None, probs, mass)


def run(gen: Generator, cfg: JudgeConfig, it: IterPaths, seed: int = 0) -> dict:
    """Judge every candidate of the iteration in one batch; returns the stage's metrics. A candidate of a prompt
    with checkable instructions also gets the checkers' verdicts (`checks`), which the judge never sees, and the
    metrics say how often the judge agrees with them (`constraints.agreement`)."""
    prompts = {r["prompt_id"]: r for r in read_jsonl(it.prompts, required_fields(Prompt))}
    candidates = read_jsonl(it.candidates, required_fields(Candidate))
    items = []
    for c in candidates:
        if c["prompt_id"] not in prompts:
            raise ValueError(f"{it.candidates}: candidate {c['candidate_id']} names unknown prompt {c['prompt_id']}")
        items.append((prompts[c["prompt_id"]]["text"], c["text"]))
    before = gen.prefix_cache()
    judgements = judge_texts(gen, cfg, items, seed=seed)
    for c, j in zip(candidates, judgements, strict=True):
        j.candidate_id, j.prompt_id = c["candidate_id"], c["prompt_id"]
        prompt = prompts[c["prompt_id"]]
        if prompt.get("instruction_id_list"):
            j.checks = ConstraintChecks(*check_prompt(prompt["instruction_id_list"], prompt["kwargs"], c["text"]))
    rows = [to_row(j) for j in judgements]
    write_jsonl(it.judgements, rows)
    return {
        **judgement_metrics(judgements),
        "constraints": judge_checker_agreement(rows),
        "prefix_cache": prefix_cache_delta(before, gen.prefix_cache()),
    }


def prefix_cache_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float | None] | None:
    """The engine's prefix-cache counters over a stage: prompt tokens looked up, found, and the hit rate (None
    where the engine reports no counters)."""
    if before is None or after is None:
        return None
    queried = after["queried_tokens"] - before["queried_tokens"]
    hit = after["hit_tokens"] - before["hit_tokens"]
    return {"queried_tokens": queried, "hit_tokens": hit, "hit_rate": round(hit / queried, 4) if queried else None}


def judgement_metrics(judgements: list[Judgement]) -> dict:
    samples = [s for j in judgements for s in j.samples]
    failed = [s for s in samples if s.score is None]
    errors: dict[str, int] = {}
    for s in failed:
        errors[s.error or "unknown"] = errors.get(s.error or "unknown", 0) + 1
    histogram = [0] * (MAX_SCORE + 1)
    for j in judgements:
        if j.score is not None:
            histogram[min(MAX_SCORE, int(round(j.score)))] += 1
    masses = [s.digit_mass for s in samples if s.digit_mass is not None]
    return {
        "candidates_judged": len(judgements),
        "judge_samples": len(samples),
        "parse_failures": len(failed),
        "parse_failure_rate": len(failed) / len(samples) if samples else 0.0,
        "parse_errors": errors,
        "unscored_candidates": sum(j.score is None for j in judgements),
        "score_histogram": histogram,
        "mean_score": mean([j.score for j in judgements if j.score is not None]),
        "digit_mass_histogram": mass_histogram(masses) if masses else None,
        "mean_digit_mass": mean(masses),
    }


MASS_BINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def mass_histogram(masses: list[float]) -> dict[str, int]:
    """Counts of digit masses in [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]."""
    counts = {f"{lo:.1f}-{hi:.1f}": 0 for lo, hi in zip(MASS_BINS, MASS_BINS[1:], strict=False)}
    keys = list(counts)
    for m in masses:
        counts[keys[min(len(keys) - 1, int(m * 10))]] += 1
    return counts
