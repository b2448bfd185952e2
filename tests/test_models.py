"""Model resolution: the embedded GGUF converted once, local folders, hub ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfreward.models import resolve_model


def test_embedded_model_is_a_plain_safetensors_folder(embedded_model: Path) -> None:
    files = {p.name for p in embedded_model.iterdir()}
    assert "model.safetensors" in files and "chat_template.jinja" in files
    assert not any(name.endswith((".bin", ".pt", ".gguf")) for name in files)
    config = json.loads((embedded_model / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576


def test_embedded_conversion_happens_once(embedded_model: Path) -> None:
    before = (embedded_model / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("smollm2-135m-instruct", embedded_model.parent.parent) == str(embedded_model)
    assert (embedded_model / "model.safetensors").stat().st_mtime_ns == before


def test_embedded_chat_template_and_tokens(embedded_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_embedded_model_answers_coherently(embedded_model: Path) -> None:
    from selfreward.config import EngineConfig
    from selfreward.generation import HFGenerator, SamplingSpec

    gen = HFGenerator(str(embedded_model), EngineConfig(backend="transformers", dtype="float32"))
    out = gen.chat(
        [[{"role": "user", "content": "What is the capital of France?"}]], SamplingSpec(temperature=0, max_tokens=24)
    )
    assert "Paris" in out[0][0].text


def test_local_folder_and_errors(tmp_path: Path, tiny_model: Path) -> None:
    assert resolve_model(str(tiny_model), tmp_path) == str(tiny_model)
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model(str(tmp_path), tmp_path)
    with pytest.raises(ValueError, match="no such folder"):
        resolve_model("./missing/model", tmp_path)
    assert resolve_model("org/name", tmp_path) == "org/name"  # a hub id is passed on, not loaded
