"""SFT on the tiny model: the prompt's tokens carry no loss, the weights change, the files are written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selfreward.artifacts import IterPaths, read_jsonl
from selfreward.config import JudgeConfig, RunConfig, SFTStageConfig
from selfreward.loop.sft import build_trainer, sampling_strategy, seed_examples, train_sft, write_data

CFG = SFTStageConfig(batch_size=2, grad_accum=1, learning_rate=1e-2, precision="fp32", max_steps=2, max_length=256)


def examples(n: int = 4) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}: name a colour."},
                {"role": "assistant", "content": f"Blue, number {i}."},
            ]
        }
        for i in range(n)
    ]


def test_prompt_tokens_are_masked(tmp_path: Path, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    trainer = build_trainer(str(tiny_model), examples(2), CFG, str(tmp_path), seed=0)
    row = trainer.train_dataset[0]
    messages = examples(2)[0]["messages"]
    prompt_ids = tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)["input_ids"]
    full_ids = tok.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert row["input_ids"] == full_ids
    n = len(prompt_ids)  # system + user turn + "<|im_start|>assistant\n"
    assert row["labels"][:n] == [-100] * n
    assert row["labels"][n:] == full_ids[n:]  # the reply and its <|im_end|> are trained
    assert tok.decode(full_ids[n:]).startswith("Blue, number 0.<|im_end|>")

    unmasked = build_trainer(str(tiny_model), examples(2), SFTStageConfig(assistant_only_loss=False), str(tmp_path))
    assert unmasked.train_dataset[0]["labels"] == full_ids


def test_too_long_examples_are_dropped_not_truncated(tmp_path: Path, tiny_model: Path) -> None:
    long = examples(1)[0]
    long["messages"][0]["content"] = "word " * 400
    cfg = SFTStageConfig(max_length=64)
    trainer = build_trainer(str(tiny_model), [long, *examples(2)], cfg, str(tmp_path))
    assert trainer.dropped_too_long == 1 and len(trainer.train_dataset) == 2


def test_length_grouped_batches_pad_less_and_still_cover_every_example(tmp_path: Path, tiny_model: Path) -> None:
    import dataclasses

    rows = examples(8)
    for i, row in enumerate(rows):  # short and long replies, interleaved
        row["messages"][1]["content"] += " and more words" * (30 if i % 2 else 0)

    def padding(group: bool) -> tuple[float, list[int]]:
        cfg = dataclasses.replace(CFG, group_by_length=group)
        trainer = build_trainer(str(tiny_model), rows, cfg, str(tmp_path / str(group)), seed=0)
        padded = real = 0
        seen = []
        for batch in trainer.get_train_dataloader():
            padded += batch["input_ids"].numel()
            real += int(batch["attention_mask"].sum())
            seen += [len(x) for x in batch["input_ids"].tolist()]
        return 1 - real / padded, seen

    grouped, n_grouped = padding(True)
    shuffled, n_shuffled = padding(False)
    assert len(n_grouped) == len(n_shuffled) == 8
    assert grouped < shuffled and grouped == 0.0, (grouped, shuffled)


def test_length_grouping_is_left_off_on_several_processes(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """It is the default, so a multi-process run still starts: with uniformly shuffled batches, said in the log."""
    import dataclasses

    grouped, shuffled = dataclasses.replace(CFG, group_by_length=True), dataclasses.replace(CFG, group_by_length=False)
    trainer = build_trainer(str(tiny_model), examples(2), grouped, str(tmp_path))
    assert trainer.args.train_sampling_strategy == "group_by_length" == sampling_strategy(grouped)
    assert sampling_strategy(shuffled) == "random"
    monkeypatch.setenv("WORLD_SIZE", "2")
    with caplog.at_level("WARNING"):
        assert sampling_strategy(grouped) == "random"
    assert "group_by_length is left off on 2 processes" in caplog.text


def test_train_sft_changes_weights_and_logs(tmp_path: Path, tiny_model: Path, trl_lm_head_default: Any) -> None:
    from safetensors.torch import load_file

    out, log = tmp_path / "model", tmp_path / "sft_log.jsonl"
    metrics = train_sft(str(tiny_model), examples(4), CFG, out, seed=0, log_path=log)
    assert hasattr(trl_lm_head_default._use_triton, "trl_default")  # the LM head scored only labelled positions
    assert metrics["steps"] == 2 and metrics["trained_examples"] == 4 and metrics["first_loss"] > 0
    before, after = load_file(tiny_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert all(k in changed for k in before if "norm" not in k)
    assert all(t.dtype == after[next(iter(after))].dtype for t in after.values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert (out / "tokenizer.json").exists()
    assert any("loss" in row for row in read_jsonl(log))


def test_seed_data_stage(tmp_path: Path) -> None:
    seed_cfg, judge_cfg = RunConfig().seed_data, JudgeConfig()
    it = IterPaths(tmp_path)
    m = write_data(seed_cfg, judge_cfg, SFTStageConfig(), it, seed=0)
    assert m == {"examples": 430, "by_source": {"ift": 212, "eft-seed": 218}}
    rows = read_jsonl(it.sft_data)
    assert rows[0]["messages"][0]["role"] == "user" and rows[0]["messages"][-1]["role"] == "assistant"
    only_ift = seed_examples(seed_cfg, judge_cfg, SFTStageConfig(eft=False, max_examples=10), seed=0)
    assert len(only_ift) == 10 and {e["source"] for e in only_ift} == {"ift"}
