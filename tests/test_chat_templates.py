"""Other chat templates than SmolLM2's ChatML: the tiny model with an `[INST]`-style template (no system role: a
system message is an error) and with a Llama-3-style one (header tokens, a begin-of-text token) runs the loop end to
end, the SFT trains the reply only, the judge's prefill follows the opened assistant turn; a model whose tokenizer
has no chat template is refused before anything runs. The templates are ours, written for these tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from selfreward.config import ConfigError, SFTStageConfig
from selfreward.models import check_model

INST = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('this template has no system role') }}"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
# Llama 3 writes "\n\n" after each header; its tokenizer splits "\n\n" off the text that follows, SmolLM2's (the
# tiny model's) merges it differently with and without the reply, which would shift the prompt/reply boundary. One
# "\n" keeps the test about the template's structure, not that tokenizer pairing.
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n{% endif %}"
)
TEMPLATES = {"inst": (INST, "[INST] "), "llama3": (LLAMA3, "<|start_header_id|>user<|end_header_id|>")}


def with_template(tiny_model: Path, out: Path, template: str | None) -> Path:
    """A copy of the tiny model whose tokenizer has `template` (None: no chat template at all)."""
    from transformers import AutoTokenizer

    shutil.copytree(tiny_model, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = template
    for f in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
        (out / f).unlink(missing_ok=True)
    tok.save_pretrained(out)
    if template is None:  # save_pretrained keeps nothing to remove, but make sure
        config = json.loads((out / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_loop_runs_end_to_end_with_another_chat_template(tmp_path: Path, tiny_model: Path, name: str) -> None:
    import datasets
    from transformers import AutoTokenizer
    from trl.data_utils import maybe_apply_chat_template

    from selfreward.artifacts import read_jsonl
    from selfreward.loop.pipeline import iterate
    from tests.test_pipeline import tiny_config

    template, marker = TEMPLATES[name]
    model = with_template(tiny_model, tmp_path / f"tiny-{name}", template)
    run = iterate(tiny_config(tmp_path, model, f"run_name={name}"), 1)
    it = run.iteration(1)
    assert len(read_jsonl(it.prompts)) == 6 and len(read_jsonl(it.candidates)) == 18
    assert all(j["score"] is not None for j in read_jsonl(it.judgements))  # the prefill followed the assistant turn
    pairs = datasets.load_from_disk(str(it.pairs_dataset))
    assert len(pairs) > 0 and (it.model / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(it.model)
    assert tok.chat_template == template  # the trained models keep the template
    row = {k: pairs[0][k] for k in ("prompt", "chosen", "rejected")}
    rendered = maybe_apply_chat_template(row, tok)
    assert marker in rendered["prompt"] and "<|im_start|>user" not in rendered["prompt"]  # no ChatML turns


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_sft_trains_only_the_reply_with_another_chat_template(tmp_path: Path, tiny_model: Path, name: str) -> None:
    from transformers import AutoTokenizer

    from selfreward.loop.sft import build_trainer
    from tests.test_sft import examples

    model = with_template(tiny_model, tmp_path / "m", TEMPLATES[name][0])
    cfg = SFTStageConfig(batch_size=2, grad_accum=1, precision="fp32", max_steps=1, max_length=256)
    trainer = build_trainer(str(model), examples(2), cfg, str(tmp_path / "out"), seed=0)
    tok = AutoTokenizer.from_pretrained(model)
    messages = examples(2)[0]["messages"]
    prompt_ids = tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)["input_ids"]
    row = trainer.train_dataset[0]
    n = len(prompt_ids)
    assert row["input_ids"][:n] == prompt_ids
    assert row["labels"][:n] == [-100] * n
    assert tok.decode([t for t in row["labels"][n:] if t != -100]).strip().startswith("Blue, number 0.")


def test_a_system_message_is_an_error_the_template_raises(tmp_path: Path, tiny_model: Path) -> None:
    """The loop never sends a system message (so templates without a system role work); the template's own error
    shows what would happen if it did."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(with_template(tiny_model, tmp_path / "m", INST))
    with pytest.raises(Exception, match="no system role"):
        tok.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], tokenize=False)


def test_a_model_without_a_chat_template_is_refused_before_anything_runs(tmp_path: Path, tiny_model: Path) -> None:
    from selfreward.cli import main

    model = with_template(tiny_model, tmp_path / "plain", None)
    with pytest.raises(ConfigError, match="no chat template"):
        check_model(str(model))
    out = tmp_path / "runs"
    assert main(["iterate", "--config", "configs/tiny.yaml", f"model={model}", f"output_dir={out}", "-n", "1"]) == 2
    assert not out.exists() or not any(out.rglob("*.jsonl"))
