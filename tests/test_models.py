"""Model resolution: the embedded GGUF converted once, local folders, hub ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def test_embedded_conversion_runs_in_a_child_process(tmp_path: Path, embedded_model: Path) -> None:
    """Dequantising leaves ~1.1 GiB in the process that does it; the loop converts at its start and would carry that
    beside every later stage, so the conversion runs in a child and writes the same weights."""
    import psutil
    import torch
    from safetensors.torch import load_file

    from selfreward.models import convert_embedded

    before = psutil.Process().memory_full_info().pss
    out = convert_embedded(tmp_path)
    assert psutil.Process().memory_full_info().pss - before < 0.3 * 2**30
    assert out == tmp_path / "models" / "smollm2-135m-instruct"
    ours, fixture = load_file(out / "model.safetensors"), load_file(embedded_model / "model.safetensors")
    assert ours.keys() == fixture.keys() and all(torch.equal(ours[k], fixture[k]) for k in ours)


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


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_lm_head_on_labelled_positions_only_same_loss_and_gradients(
    tiny_model: Path, trl_lm_head_default: Any, monkeypatch: pytest.MonkeyPatch, bf16: bool
) -> None:
    """TRL's fused LM head with only the labelled positions projected (what the SFT and DPO stages use on CPU)
    gives the loss, per-token outputs and gradients of TRL's every-position default, from fewer rows; a row with
    no label at all included, and under bf16 autocast as the stages train on a CPU with native bf16."""
    import torch
    from transformers import AutoModelForCausalLM

    from selfreward.models import lm_head_on_labelled_positions_only

    trl_utils = trl_lm_head_default
    real = trl_utils._ChunkedLogProbFunction
    rows: list[int] = []

    class Spy:
        @staticmethod
        def apply(hidden: torch.Tensor, *args: Any) -> Any:
            rows.append(hidden.shape[0])
            return real.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (3, 40), generator=gen)
    labels = ids.clone()
    labels[0, :25] = -100  # a prompt
    labels[1, :10] = -100  # a shorter prompt ...
    labels[1, 33:] = -100  # ... and right padding
    labels[2, :] = -100  # nothing to learn in this row
    mask = torch.ones_like(ids)
    mask[1, 33:] = 0
    labelled = int((labels[:, 1:] != -100).sum())  # next-token labels: 15 + 23 + 0

    def forward_backward() -> tuple[Any, dict[str, torch.Tensor]]:
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, use_safetensors=True)
        trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    every, every_grads = forward_backward()
    lm_head_on_labelled_positions_only()
    lm_head_on_labelled_positions_only()  # a second call changes nothing
    only, only_grads = forward_backward()
    assert rows == [3 * 39, labelled]
    tol = {"rtol": 2e-2, "atol": 1e-3} if bf16 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(only.loss, every.loss, **tol)
    torch.testing.assert_close(only.log_probs, every.log_probs, **tol)
    torch.testing.assert_close(only.entropy, every.entropy, **tol)
    assert torch.equal(only.label_mask, every.label_mask)
    assert (only.log_probs[2] == 0).all() and (only.entropy[2] == 0).all()  # the unlabelled row: zeros either way
    if not bf16:  # a near-tie between two logits can flip under bf16 rounding
        assert torch.equal(only.is_top1, every.is_top1)
    assert only_grads.keys() == every_grads.keys() and len(only_grads) > 0
    for name, grad in every_grads.items():
        torch.testing.assert_close(only_grads[name], grad, **(tol if bf16 else {"rtol": 1e-4, "atol": 1e-7}), msg=name)
