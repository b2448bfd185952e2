"""The planner: parameter counts and memory by hand, the refusal of a config that cannot fit (before anything
runs), and every shipped config fitting the hardware it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfreward.config import ConfigError, load_config
from selfreward.planner import GIB, KNOWN_SHAPES, TRAINING_OVERHEAD_GIB, Hardware, Shape, check, plan, training_plan

ROOT = Path(__file__).resolve().parent.parent
SMOL = Shape.of(KNOWN_SHAPES["smollm2-135m-instruct"])
MISTRAL = Shape.of(KNOWN_SHAPES["mistralai/Mistral-7B-Instruct-v0.3"])


def test_parameter_counts_by_hand() -> None:
    # SmolLM2-135M: tied embeddings 49152*576; per layer q,o 576*576, k,v 576*192, MLP 3*576*1536, 2 norms
    layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
    assert SMOL.parameters == 49152 * 576 + 30 * layer + 576 == 134_515_008
    # Mistral-7B: untied 32768*4096 twice; q,o 4096^2, k,v 4096*1024, MLP 3*4096*14336
    layer = 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert MISTRAL.parameters == 2 * 32768 * 4096 + 32 * layer + 4096 == 7_248_023_552
    # LoRA r=16 on the seven linear layers of each of Mistral's 32 layers
    per_layer = 16 * (2 * 8192 + 2 * (4096 + 1024) + 3 * (4096 + 14336))
    assert MISTRAL.lora_parameters(16) == 32 * per_layer


def test_training_memory_by_hand() -> None:
    # the default seed SFT on a CPU without bf16: fp32, 2 sequences of 1024 tokens, no gradient checkpointing
    p = training_plan(
        "seed sft", SMOL, Hardware(0, 24), bf16=False, lora=False, lora_r=16, gradient_checkpointing=False,
        sequences=2, length=1024, trained_tokens=1e6, reference=False, processes=1, sharded=False,
    )  # fmt: skip
    assert p.parts["weights+grads+optimizer"] == pytest.approx(16 * 134_515_008 / GIB)  # 2.00 GiB
    assert p.parts["activations"] == pytest.approx(30 * 34 * 576 * 2048 * 2 / GIB)  # 2.24 GiB
    assert p.parts["logits"] == pytest.approx(2 * 2048 * 49152 * 4 / GIB)  # 0.75 GiB
    assert p.gib == pytest.approx(sum(p.parts.values())) and p.parts["runtime"] == TRAINING_OVERHEAD_GIB
    # Mistral-7B in bf16, full: 16 bytes a parameter (108 GiB) whatever the precision; over 8 shards 13.5
    full = dict(bf16=True, lora_r=16, gradient_checkpointing=True, sequences=8, length=2048, trained_tokens=1e6)
    one = training_plan(
        "dpo", MISTRAL, Hardware(1, 80), lora=False, reference=True, processes=1, sharded=False, **full
    )
    assert one.parts["weights+grads+optimizer"] == pytest.approx(16 * 7_248_023_552 / GIB)
    assert one.parts["reference model"] == pytest.approx(4 * 7_248_023_552 / GIB)  # loaded in fp32, ~27 GiB
    eight = training_plan(
        "dpo", MISTRAL, Hardware(8, 80), lora=False, reference=False, processes=8, sharded=True, **full
    )
    assert eight.parts["weights+grads+optimizer"] == pytest.approx(16 * 7_248_023_552 / 8 / GIB)
    lora = training_plan(
        "dpo", MISTRAL, Hardware(1, 80), lora=True, reference=False, processes=1, sharded=False, **full
    )
    assert lora.parts["weights+grads+optimizer"] == pytest.approx(
        (4 * 7_248_023_552 + 16 * MISTRAL.lora_parameters(16)) / GIB
    )


def test_full_dpo_of_7b_on_one_80gb_gpu_is_refused_naming_the_stage_and_what_would_fit() -> None:
    old = load_config(ROOT / "configs" / "gpu_1x80gb.yaml", ["dpo.lora=false", "sft.lora=false", "seed_sft=false"])
    with pytest.raises(ConfigError) as err:
        check(old, Hardware(1, 80))
    message = str(err.value)
    assert "stage dpo does not fit" in message and "dpo.lora=true" in message and "\n" not in message


@pytest.mark.parametrize(
    ("config", "hardware"),
    [
        ("default.yaml", Hardware(0, 24)),
        ("tiny.yaml", Hardware(0, 24)),
        ("reason.yaml", Hardware(0, 24)),
        ("gpu_1x80gb.yaml", Hardware(1, 80)),
        ("gpu_8x80gb.yaml", Hardware(8, 80)),
    ],
)
def test_every_shipped_config_fits_the_hardware_it_names(config: str, hardware: Hardware, tmp_path: Path) -> None:
    overrides = [f"model={tmp_path / 'tiny'}"] if config == "tiny.yaml" else []
    if config == "tiny.yaml":  # the tiny test model's shape: a 2-layer Llama on SmolLM2's tokenizer
        (tmp_path / "tiny").mkdir()
        shape = dict(KNOWN_SHAPES["smollm2-135m-instruct"], num_hidden_layers=2)
        (tmp_path / "tiny" / "config.json").write_text(json.dumps(shape))
    cfg = load_config(ROOT / "configs" / config, overrides)
    command = "reason" if config == "reason.yaml" else "iterate"
    check(cfg, hardware, command)
    assert all(s.fits for s in plan(cfg, hardware, command)[2])


def test_ppo_is_planned_with_its_critic_and_refused_where_it_cannot_fit() -> None:
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert "ppo" not in [s.stage for s in plan(cfg, Hardware(0, 24))[2]]
    (ppo,) = [s for s in plan(cfg, Hardware(0, 24), "ppo")[2] if s.stage == "ppo"]
    p = 134_515_008  # SmolLM2-135M
    assert ppo.parts["critic weights+grads+optimizer"] == pytest.approx(16 * p / GIB)
    assert ppo.parts["reward model or judge"] == pytest.approx(4 * p / GIB) and ppo.fits
    big = load_config(ROOT / "configs" / "gpu_1x80gb.yaml", ["seed_sft=false"])
    with pytest.raises(ConfigError, match="stage ppo does not fit.*critic still trains fully"):
        check(big, Hardware(1, 80), "ppo")
    check(big, Hardware(1, 80), "iterate")  # the loop itself fits with LoRA


def test_iterate_refuses_a_model_that_cannot_fit_before_anything_runs(tmp_path: Path, capsys) -> None:
    from selfreward.cli import main

    big = tmp_path / "big"
    big.mkdir()
    shape = dict(KNOWN_SHAPES["mistralai/Mistral-7B-Instruct-v0.3"], num_hidden_layers=800)  # ~175B parameters
    (big / "config.json").write_text(json.dumps(shape))
    code = main(["iterate", "--config", str(ROOT / "configs" / "tiny.yaml"), f"model={big}", f"output_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plan: stage seed sft does not fit" in err[0]
    assert not (tmp_path / "tiny").exists()  # no run folder: nothing ran
