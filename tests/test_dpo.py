"""The DPO stage on the tiny model: every parameter changes, losses are logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selfreward.artifacts import IterPaths, read_jsonl
from selfreward.config import DPOStageConfig
from selfreward.loop.dpo import run
from selfreward.loop.pairs import empty_pairs_dataset


def make_pairs(it: IterPaths, n: int) -> None:
    import datasets

    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}: name a colour."}],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": f"I do not know {i}."}],
        }
        for i in range(n)
    ]
    (datasets.Dataset.from_list(rows) if rows else empty_pairs_dataset()).save_to_disk(
        str(it.pairs_dataset), num_shards=1
    )


def test_dpo_changes_every_parameter_and_logs(tmp_path: Path, tiny_model: Path, trl_lm_head_default: Any) -> None:
    from safetensors.torch import load_file

    it = IterPaths(tmp_path)
    make_pairs(it, 4)
    cfg = DPOStageConfig(
        batch_size=2,
        grad_accum=1,
        epochs=1,
        max_epochs=2,
        learning_rate=1e-2,
        precision="fp32",
        min_pairs=2,
        max_length=64,
    )
    metrics = run(cfg, str(tiny_model), None, it)
    assert hasattr(trl_lm_head_default._use_triton, "trl_default")  # the LM head scored only labelled positions
    assert metrics["skipped"] is False and metrics["steps"] == 4
    # 4 pairs / (batch 2 x accumulation 1) = 2 steps a pass; raised towards min_steps 50 but at most
    # max_epochs 2 passes: 4 optimiser steps, still below min_steps, which the metrics say
    assert metrics["optimizer_steps"] == 4 and metrics["effective_batch"] == 2 and metrics["epochs"] == 2
    assert metrics["too_few_steps"]
    assert metrics["last_reward_accuracy"] is not None and metrics["mean_reward_margin"] is not None
    # how far the model moved, measured on the pairs after training: a real shift at lr 1e-2
    shift = metrics["shift"]
    assert shift["pairs"] == 4 and shift["kl_per_token"] > 0
    assert shift["chosen_logp_change"] != 0 and shift["rejected_logp_change"] != 0
    before, after = load_file(tiny_model / "model.safetensors"), load_file(it.model / "model.safetensors")
    for name, tensor in before.items():
        if "norm" in name:  # RMSNorm weights start at 1 and can stay there at this lr
            continue
        assert not (tensor == after[name]).all(), f"{name} did not change"
    log = read_jsonl(it.dpo_log)
    assert any("loss" in row and "rewards/margins" in row for row in log)
    assert json.loads((it.model / "config.json").read_text())["torch_dtype" if False else "dtype"] == "float32"


def test_one_pair_per_pass_twice_accumulated_trains_the_model_of_two_pairs_per_pass(
    tmp_path: Path, tiny_model: Path
) -> None:
    """The default (batch 1 x accumulation 2) pads each pass to its own pair only; it must train the same model as
    batch 2 x accumulation 1 on the same pairs in the same order: DPO's loss is a mean over pairs. 5 pairs, 2 passes:
    each pass ends on a step of one pair."""
    import datasets
    import torch
    from safetensors.torch import load_file

    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}: name a colour." + " Why?" * (i % 3)}],
            "chosen": [{"role": "assistant", "content": "Blue, like the sky on a clear day. " * (1 + i % 4)}],
            "rejected": [{"role": "assistant", "content": f"I do not know {i}."}],
        }
        for i in range(5)
    ]
    models = {}
    for batch, accum in ((2, 1), (1, 2)):
        it = IterPaths(tmp_path / f"b{batch}")
        datasets.Dataset.from_list(rows).save_to_disk(str(it.pairs_dataset), num_shards=1)
        cfg = DPOStageConfig(
            batch_size=batch,
            grad_accum=accum,
            epochs=2,
            max_epochs=2,
            learning_rate=1e-3,
            precision="fp32",
            min_pairs=2,
            max_length=96,
            save_steps=0,
        )
        metrics = run(cfg, str(tiny_model), None, it)
        assert metrics["optimizer_steps"] == 6 and metrics["effective_batch"] == 2
        models[batch] = load_file(it.model / "model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    for name, tensor in models[2].items():
        moved = (tensor - base[name]).abs().max()
        assert torch.allclose(models[1][name], tensor, rtol=0, atol=1e-3 * float(moved) + 1e-7), name
    assert any(not torch.equal(models[2][n], base[n]) for n in base)


def test_small_pair_sets_get_more_passes_up_to_max_epochs() -> None:
    from selfreward.loop.dpo import planned_steps

    cfg = DPOStageConfig(batch_size=2, grad_accum=1, epochs=3, min_steps=50, max_epochs=8)
    assert planned_steps(18, cfg, 1, 1) == 50  # 9 a pass: 27 at 3 passes, raised to 50 (5.6 passes)
    assert planned_steps(40, cfg, 1, 1) == 60  # 3 passes already give 60
    assert planned_steps(10, cfg, 1, 1) == 40  # 5 a pass: 8 passes give 40, short of 50
    assert planned_steps(18, cfg, 2, 1) == 40  # accumulation 2: ceil(9 / 2) = 5 a pass
    assert planned_steps(18, cfg, 1, 3) == 24  # 3 processes: ceil(18 / 6) = 3 a pass, 8 passes
    exact = DPOStageConfig(batch_size=2, epochs=3, min_steps=50, max_epochs=3)
    assert planned_steps(18, exact, 1, 1) == 27


def test_dpo_with_lora_merges_adapter(tmp_path: Path, tiny_model: Path) -> None:
    from safetensors.torch import load_file

    it = IterPaths(tmp_path)
    make_pairs(it, 2)
    cfg = DPOStageConfig(
        batch_size=2, grad_accum=1, learning_rate=1e-2, precision="fp32", min_pairs=2, lora=True, max_length=64
    )
    run(cfg, str(tiny_model), None, it)
    after = load_file(it.model / "model.safetensors")
    assert not any("lora" in k for k in after)  # merged into a plain model
    before = load_file(tiny_model / "model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before)


def test_policy_shift_is_zero_for_an_unchanged_model(tmp_path: Path, tiny_model: Path) -> None:
    import datasets

    from selfreward.loop.dpo import policy_shift

    it = IterPaths(tmp_path)
    make_pairs(it, 2)
    shift = policy_shift(str(tiny_model), str(tiny_model), datasets.load_from_disk(str(it.pairs_dataset)), 64)
    assert shift["kl_per_token"] == pytest.approx(0.0, abs=1e-6)
    assert shift["chosen_logp_change"] == pytest.approx(0.0, abs=1e-6)


def test_policy_shift_batched_equals_one_answer_at_a_time(tmp_path: Path, tiny_model: Path) -> None:
    """Left-padded batches of answers of different lengths give the numbers of one unpadded answer per pass,
    for a model that did move (noise added to every weight)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfreward.loop.dpo import chat_ids, policy_shift

    moved = tmp_path / "moved"
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for w in model.parameters():
            w.add_(0.02 * torch.randn_like(w))
    model.save_pretrained(moved)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(moved)
    rows = [
        {
            "prompt": [{"role": "user", "content": "Tell me about colour " + "and more " * i}],
            "chosen": [{"role": "assistant", "content": "Blue is calm. " * (1 + 2 * i)}],
            "rejected": [{"role": "assistant", "content": f"No idea {i}."}],
        }
        for i in range(5)
    ]
    pairs = datasets.Dataset.from_list(rows)
    batched = policy_shift(str(tiny_model), str(moved), pairs, 64, batch_size=3)

    # the definition, one unpadded answer per forward pass, full logits
    tok = AutoTokenizer.from_pretrained(moved)
    models = [AutoModelForCausalLM.from_pretrained(m, dtype=torch.float32).eval() for m in (tiny_model, moved)]
    change: dict[str, list[float]] = {"chosen": [], "rejected": []}
    kl, kl_tokens = 0.0, 0
    for row in rows:
        start = len(chat_ids(tok, row["prompt"], add_generation_prompt=True))
        for side in ("chosen", "rejected"):
            x = torch.tensor([chat_ids(tok, row["prompt"] + row[side])[:64]])
            with torch.inference_mode():
                o, w = (torch.log_softmax(m(x).logits[0, start - 1 : -1], -1) for m in models)
            target = x[0, start:].unsqueeze(-1)
            change[side].append((w.gather(-1, target) - o.gather(-1, target)).mean().item())
            if side == "chosen":
                kl += (w.exp() * (w - o)).sum().item()
                kl_tokens += x.shape[1] - start
    expected = {
        "chosen_logp_change": sum(change["chosen"]) / len(rows),
        "rejected_logp_change": sum(change["rejected"]) / len(rows),
        "kl_per_token": kl / kl_tokens,
    }
    assert expected["kl_per_token"] > 1e-4 and expected["chosen_logp_change"] != 0.0
    for key, value in expected.items():
        assert batched[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_accumulation_is_divided_by_the_number_of_processes(monkeypatch) -> None:
    """Effective batch = batch x accumulation x processes stays constant: 8 on 1 process is 2 on 4."""
    from selfreward.config import ConfigError
    from selfreward.launch import per_process_accumulation

    assert per_process_accumulation(8, "dpo.grad_accum") == 8
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert per_process_accumulation(8, "dpo.grad_accum") == 2
    with pytest.raises(ConfigError, match="not divisible by the 4 processes"):
        per_process_accumulation(6, "dpo.grad_accum")


def test_no_pairs_skips_dpo_and_copies_the_model(tmp_path: Path, tiny_model: Path) -> None:
    """An iteration where every prompt was dropped (e.g. all within the judge's noise) writes an empty pairs/
    that loads back with its columns, and DPO copies M_t instead of crashing."""
    it = IterPaths(tmp_path)
    make_pairs(it, 0)
    metrics = run(DPOStageConfig(precision="fp32"), str(tiny_model), None, it)
    assert metrics["skipped"] is True and metrics["pairs"] == 0
    assert (it.model / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()


def test_held_out_pairs_are_evaluated_during_training_and_never_trained_on(tmp_path: Path, tiny_model: Path) -> None:
    it = IterPaths(tmp_path)
    make_pairs(it, 10)
    cfg = DPOStageConfig(
        batch_size=2, grad_accum=1, epochs=1, max_epochs=2, min_steps=10, learning_rate=1e-2, precision="fp32",
        min_pairs=2, max_length=64, eval_share=0.2,
    )  # fmt: skip
    metrics = run(cfg, str(tiny_model), None, it)
    # 8 pairs trained (4 steps a pass, raised to min_steps 10 but at most 2 passes: 8 steps); 2 held out
    assert metrics["pairs"] == 8 and metrics["optimizer_steps"] == 8 and metrics["eval_pairs"] == 2
    # evaluated every steps // 5 = 1 step: 8 held-out losses, the best step among them
    assert len(metrics["eval_loss"]) == 8 and metrics["eval_best_step"] in metrics["eval_steps"]
    assert all(0 <= a <= 1 for a in metrics["eval_reward_accuracy"])
    import datasets

    from selfreward.loop.dpo import held_out

    data = datasets.load_from_disk(str(it.pairs_dataset))
    train, held = held_out(data, 0.2, 0)
    assert len(held) == 2 and not {r["prompt"][0]["content"] for r in held} & {
        r["prompt"][0]["content"] for r in train
    }
    assert held_out(data, 0.0, 0) == (data, None)
