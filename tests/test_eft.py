"""EFT data: the seed files, the default examples made from them, and the builder's filtering rule
(hand-made judgements)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from selfreward.artifacts import DataError, read_jsonl
from selfreward.config import JudgeConfig, RunConfig, SeedConfig
from selfreward.generation import Completion, Generator
from selfreward.inputs import LabelledItem
from selfreward.judge_text import load_template, parse_score, render_judge_prompt
from selfreward.loop.eft import (
    build,
    choose_agreeing,
    default_examples,
    downsample_most_common,
    load_instructions,
    load_ranked,
    select_agreeing,
)
from selfreward.records import JudgeSample

ROOT = Path(__file__).resolve().parent.parent
SEED = RunConfig().seed_data


# --------------------------------------------------------------------------- the seed files


def test_seed_instructions_are_valid() -> None:
    rows = read_jsonl(ROOT / SEED.instructions)
    assert len(rows) == 212
    assert all(set(r) == {"id", "category", "instruction", "response"} for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({" ".join(r["instruction"].lower().split()) for r in rows}) == len(rows)
    assert all(15 <= len(r["instruction"]) <= 600 for r in rows)
    assert all(0 < len(r["response"].strip()) <= 1500 for r in rows)
    assert len(load_instructions(SEED.instructions)) == 212


def test_seed_ranked_items_are_valid() -> None:
    instructions = load_instructions(SEED.instructions)
    items = load_ranked(SEED.ranked, instructions)
    assert len(items) == 72 and len({i.id for i in items}) == 72
    for item in items:
        assert item.id in instructions
        assert [r.rank for r in item.responses] == list(range(1, len(item.responses) + 1))
        scores = [r.score for r in item.responses]
        assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), item.id
        assert item.responses[0].text == instructions[item.id].response
        assert all(r.judgement.strip() and parse_score(r.judgement)[0] is None for r in item.responses)
    assert sum(len(i.responses) for i in items) == 230


def test_unknown_ranked_id_is_a_one_line_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "ranked.jsonl"
    good = (ROOT / SEED.ranked).read_text().splitlines()[0]
    bad = json.loads(good) | {"id": "seed-999"}
    path.write_text(good + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as e:
        load_ranked(path, load_instructions(SEED.instructions))
    assert f"{path}:2" in str(e.value) and "seed-999" in str(e.value) and "\n" not in str(e.value)


def test_ranked_scores_must_fall_with_rank(tmp_path: Path) -> None:
    row = json.loads((ROOT / SEED.ranked).read_text().splitlines()[0])
    row["responses"][1]["score"] = row["responses"][0]["score"]
    path = tmp_path / "ranked.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"ranked.jsonl:1: responses\[1\]: field 'score'"):
        load_ranked(path, load_instructions(SEED.instructions))


# --------------------------------------------------------------------------- default examples


def test_default_examples_from_the_seed_files() -> None:
    judge_cfg = JudgeConfig()
    examples = default_examples(SEED, judge_cfg)
    # 230 judged responses, scores 0:12 1:62 2:43 3:39 4:24 5:50; the 62 ones are cut to 50.
    assert len(examples) == 218
    assert Counter(e["score"] for e in examples) == {0: 12, 1: 50, 2: 43, 3: 39, 4: 24, 5: 50}
    instructions = load_instructions(SEED.instructions)
    items = load_ranked(SEED.ranked, instructions)
    ranked = {(instructions[i.id].instruction, r.text): r for i in items for r in i.responses}
    template = load_template(judge_cfg.template)
    prompts = {render_judge_prompt(template, q, a): (q, a) for q, a in ranked}
    for e in examples:
        user, assistant = e["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        source = ranked[prompts[user["content"]]]  # the user turn is the loop's judge prompt for that pair
        assert assistant["content"] == f"{source.judgement}\nScore: {source.score}"
        assert parse_score(assistant["content"]) == (e["score"], None) == (source.score, None)


def test_default_examples_are_seeded() -> None:
    a, b = default_examples(SEED, JudgeConfig(), seed=1), default_examples(SEED, JudgeConfig(), seed=1)
    c = default_examples(SEED, JudgeConfig(), seed=2)
    assert a == b and a != c


def test_default_examples_unknown_id(tmp_path: Path) -> None:
    ranked = tmp_path / "r.jsonl"
    ranked.write_text('{"id": "nope", "responses": []}\n')
    with pytest.raises(DataError, match=r"r.jsonl:1: unknown id 'nope'"):
        default_examples(SeedConfig(instructions=SEED.instructions, ranked=str(ranked)), JudgeConfig())


# --------------------------------------------------------------------------- filtering (pure)


def test_downsample_most_common() -> None:
    scores = [1, 1, 1, 1, 5, 5, 3]  # 1 is most common (4), 5 second (2): two of the four 1s stay
    keep = downsample_most_common(scores, seed=0)
    assert len(keep) == 5 and keep == sorted(keep)
    assert Counter(scores[i] for i in keep) == {1: 2, 5: 2, 3: 1}
    assert downsample_most_common([2, 2, 2]) == [0, 1, 2]  # one distinct score: nothing to balance
    assert downsample_most_common([4, 2, 2, 4]) == [0, 1, 2, 3]  # already balanced


def test_choose_agreeing_by_hand() -> None:
    # ranks 1, 2, 3; response 0 got 3 or 5, response 1 got 5 or 4, response 2 got 4.
    # best group: highest score of response 0 is 5 (sample 1); then below 5: response 1 has 4 (sample 1);
    # then below 4: response 2 has only 4 -> no agreeing pick.
    assert choose_agreeing([[3, 5], [5, 4], [4, 4]], [1, 2, 3]) is None
    # with a 2 for response 2 it works: picks 5 (sample 1), 4 (sample 1), 2 (sample 0)
    assert choose_agreeing([[3, 5], [5, 4], [2, 4]], [1, 2, 3]) == [1, 1, 0]
    # unparsed samples are never picked; the order of the responses need not be the order of the ranks
    assert choose_agreeing([[None, 1], [None, 4]], [2, 1]) == [1, 1]
    # a human tie needs the same score from both
    assert choose_agreeing([[3, 4], [4, 2]], [1, 1]) == [1, 0]
    assert choose_agreeing([[3], [2]], [1, 1]) is None


def sample(score: int | None) -> JudgeSample:
    text = f"because.\nScore: {score}" if score is not None else "no score"
    return JudgeSample(text, score, None if score is not None else "no_score_line")


def test_select_agreeing_keeps_agreeing_drops_the_rest() -> None:
    items = [
        LabelledItem("q0", ["good", "bad"], [1, 2]),  # agrees: 4 > 2
        LabelledItem("q1", ["good", "bad"], [1, 2]),  # disagrees: 1 < 3 in every sample
        LabelledItem("q2", ["good", "bad"], [1, 2]),  # "bad" never parsed
        LabelledItem("q3", ["a", "b", "c"], [1, 2, 3]),  # agrees with 5 > 4 > 1 only
    ]
    samples = [
        [[sample(4), sample(None)], [sample(2), sample(4)]],
        [[sample(1), sample(1)], [sample(3), sample(3)]],
        [[sample(5), sample(4)], [sample(None), sample(None)]],
        [[sample(5), sample(3)], [sample(4), sample(5)], [sample(1), sample(4)]],
    ]
    kept, counts = select_agreeing(items, samples, seed=0)
    assert counts["responses"] == 9 and counts["samples"] == 18 and counts["samples_unparsed"] == 3
    assert counts["dropped_parse_failure"] == 2 and counts["dropped_disagree"] == 2
    # agreeing picks: q0 -> 4, 2; q3 -> 5, 4, 1. Counts 4:2, 1:1, 2:1, 5:1: the most common score (4) is cut
    # to the count of the second most common (1), so one 4 is dropped.
    assert counts["dropped_downsampled"] == 1 and counts["kept"] == 4 and counts["items_kept"] == 2
    assert sum(counts[k] for k in ("kept", "dropped_parse_failure", "dropped_disagree", "dropped_downsampled")) == 9
    assert sorted(s.score for s in kept) == [1, 2, 4, 5]
    for s in kept:
        assert parse_score(s.text)[0] == s.score
        first_with_score = next(x for x in samples[s.item][s.response] if x.score == s.score)
        assert s.text == first_with_score.text


# --------------------------------------------------------------------------- the builder, with a scripted judge


class ScriptedJudge(Generator):
    """Answers each judge prompt with the scores scripted for its response text, one per sample."""

    engine_name = "scripted"

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = script
        self.prompts: list[str] = []

    def render_chat(self, messages, prefill=""):  # type: ignore[override]
        return messages[0]["content"] + prefill

    def fits(self, text, max_new_tokens):  # type: ignore[override]
        return True

    def chat(self, conversations, spec):  # type: ignore[override]
        out = []
        for conv in conversations:
            content = conv[0]["content"]
            self.prompts.append(content)
            response = next(r for r in self.script if f"<response>\n{r}\n</response>" in content)
            out.append([Completion(t, 5, "stop") for t in self.script[response][: spec.n]])
        return out


def test_build_writes_agreeing_examples_with_the_judge_template(tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    rows = [
        {"prompt": "Name a colour.", "response_a": "Blue.", "response_b": "Seven.", "human_preference": "a"},
        {"prompt": "Add 2 and 2.", "response_a": "5", "response_b": "4", "human_preference": "b"},
    ]
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge = ScriptedJudge(
        {
            "Blue.": ["Relevant.\nScore: 4", "Fine.\nScore: 5"],
            "Seven.": ["Off topic.\nScore: 1", "nonsense"],
            "5": ["Correct.\nScore: 5", "Score: 5"],  # the humans say 5 is wrong: this item disagrees
            "4": ["Wrong.\nScore: 2", "Score: 1"],
        }
    )
    out = tmp_path / "eft.jsonl"
    counts = build(judge, JudgeConfig(mode="probabilities", samples=2), str(labels), out, seed=0)
    assert counts["kept"] == 2 and counts["dropped_disagree"] == 2 and counts["dropped_parse_failure"] == 0
    written = read_jsonl(out)
    assert [e["score"] for e in written] == [5, 1]
    template = load_template(JudgeConfig().template)
    assert written[0]["messages"][0]["content"] == render_judge_prompt(template, "Name a colour.", "Blue.")
    assert written[0]["messages"][1] == {"role": "assistant", "content": "Fine.\nScore: 5"}
    assert written[1]["messages"][1]["content"] == "Off topic.\nScore: 1"


def test_cli_eft_build_on_the_tiny_model(tmp_path: Path, tiny_model: Path, capsys) -> None:
    from selfreward.cli import main

    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        json.dumps({"prompt": "Name a colour.", "responses": ["Blue.", "Seven.", "Red."], "human_ranks": [1, 3, 1]})
        + "\n"
    )
    out = tmp_path / "eft.jsonl"
    argv = ["eft", "build", "--config", str(ROOT / "configs" / "tiny.yaml"), "--labels", str(labels)]
    assert main([*argv, "--out", str(out), "--samples", "2", f"model={tiny_model}", "judge.max_tokens=8"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["responses"] == 3 and counts["samples"] == 6 and counts["judge_samples_per_response"] == 2
    assert (
        counts["kept"] + counts["dropped_parse_failure"] + counts["dropped_disagree"] + counts["dropped_downsampled"]
        == 3
    )
    assert out.exists() and len(read_jsonl(out)) == counts["kept"]
