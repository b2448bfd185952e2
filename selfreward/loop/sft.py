"""Supervised fine-tuning with TRL's SFTTrainer: the seed SFT that turns M0 into M1 (`iter_0/`, Yuan et
al. 2024 §2.1: IFT + EFT data), and the fine-tuning step of expert iteration (`train_sft`).

Stage `sft_data`
Reads  seed_data.instructions (IFT: each instruction with its reference response), the EFT examples
       (`sft.eft_data`, or `eft.default_examples` from seed_data.ranked)
Writes iter_0/sft_data.jsonl: {"messages": [user, assistant], "source": "ift" | "eft-seed" | "eft-built", ...}

Stage `sft`
Reads  iter_0/sft_data.jsonl, the base model M0
Writes iter_0/model/ (M1, fp32 safetensors + tokenizer + model card README.md), iter_0/checkpoints/sft/ while
       it trains (every `sft.save_steps`; a killed stage resumes there), iter_0/sft_log.jsonl (every trainer log)

The loss covers the assistant's reply only (`sft.assistant_only_loss`): each example goes to TRL in the
conversational prompt-completion format (prompt = the messages before the last, completion = the last,
assistant, message) with `completion_only_loss=True`, so the labels of the prompt's tokens (chat template,
default system prompt, user turn, `<|im_start|>assistant\\n`) are -100 and the reply with its closing
`<|im_end|>` is trained. TRL's own `assistant_only_loss` needs `{% generation %}` markers that SmolLM2's
chat template lacks. Examples longer than `sft.max_length` are dropped (counted), not truncated.

Run alone: the stages run as iter_0 of `selfreward iterate` (config `seed_sft: true`, the default).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from selfreward import progress
from selfreward.artifacts import DataError, IterPaths, model_digest, resume_checkpoint, write_jsonl
from selfreward.cards import Lineage, model_card
from selfreward.config import JudgeConfig, SeedConfig, SFTStageConfig, fingerprint, train_bf16
from selfreward.inputs import load_examples, load_instructions
from selfreward.launch import per_process_accumulation, stage_main, stage_parser, stage_setup
from selfreward.loop import eft
from selfreward.models import base_model, lm_head_on_labelled_positions_only, lora_config, save_trained
from selfreward.runs import Stage
from selfreward.tracking import Tracker

log = logging.getLogger(__name__)

DATA_STAGE = Stage(
    "sft_data",
    config=lambda cfg: (
        cfg.seed_data,
        cfg.judge.template,
        {k: getattr(cfg.sft, k) for k in ("ift", "eft", "eft_data", "max_examples")},
    ),
    files=lambda cfg: [cfg.seed_data.instructions, cfg.seed_data.ranked, cfg.judge.template, cfg.sft.eft_data],
    writes=("sft_data",),
)
"""The seed SFT's data: the seed files, the judge template (the EFT prompts) and the data settings."""
TRAIN_STAGE = Stage("sft", config=lambda cfg: cfg.sft, reads=("sft_data",), writes=("model", "sft_log"))
"""The seed SFT: its settings and data; the base model is passed by the pipeline."""

IFT_SOURCE = "ift"


# --------------------------------------------------------------------------- data


def ift_examples(seed_cfg: SeedConfig) -> list[dict]:
    """Each seed instruction with its reference response, as one chat exchange."""
    return [
        {
            "messages": [
                {"role": "user", "content": s.instruction},
                {"role": "assistant", "content": s.response},
            ],
            "source": IFT_SOURCE,
            "id": s.id,
        }
        for s in load_instructions(seed_cfg.instructions).values()
    ]


def seed_examples(seed_cfg: SeedConfig, judge_cfg: JudgeConfig, cfg: SFTStageConfig, seed: int = 0) -> list[dict]:
    """The seed SFT data: IFT and/or EFT examples per `cfg`, a seeded subset when `max_examples` > 0."""
    examples: list[dict] = []
    if cfg.ift:
        examples += ift_examples(seed_cfg)
    if cfg.eft:
        examples += load_examples(cfg.eft_data) if cfg.eft_data else eft.default_examples(seed_cfg, judge_cfg, seed)
    if not examples:
        raise DataError("sft: no examples (sft.ift and sft.eft are both off, or the files are empty)")
    if 0 < cfg.max_examples < len(examples):
        keep = sorted(random.Random(seed).sample(range(len(examples)), cfg.max_examples))
        examples = [examples[i] for i in keep]
    return examples


def write_data(
    seed_cfg: SeedConfig, judge_cfg: JudgeConfig, cfg: SFTStageConfig, it: IterPaths, seed: int = 0
) -> dict:
    """Stage sft_data: write iter_0/sft_data.jsonl; returns the counts by source."""
    examples = seed_examples(seed_cfg, judge_cfg, cfg, seed)
    write_jsonl(it.sft_data, examples)
    by_source: dict[str, int] = {}
    for e in examples:
        by_source[e.get("source", "?")] = by_source.get(e.get("source", "?"), 0) + 1
    return {"examples": len(examples), "by_source": by_source}


# --------------------------------------------------------------------------- training


def run(
    cfg: SFTStageConfig,
    model: str,
    it: IterPaths,
    seed: int = 0,
    tracker: Tracker | None = None,
    lineage: Lineage | None = None,
) -> dict:
    """Stage sft: train M1 from `model` (M0, resolved to a folder) on iter_0/sft_data.jsonl; `lineage` names M0
    as configured (the embedded name or hub id, which the model card's base model and licence need)."""
    lineage = lineage or Lineage(model, str(it.root.parent), 0, model)
    return train_sft(
        model,
        load_examples(it.sft_data),
        cfg,
        it.model,
        seed,
        log_path=it.sft_log,
        tracker=tracker,
        stage=f"{it.root.name}/sft",
        lineage=lineage,
        data_file=it.sft_data,
        checkpoints=it.checkpoints("sft"),
    )


def to_prompt_completion(example: dict) -> dict:
    """{"messages": [..., assistant]} -> {"prompt": [...], "completion": [assistant]} (TRL's conversational
    prompt-completion format: the loss can then skip the prompt)."""
    return {"prompt": example["messages"][:-1], "completion": example["messages"][-1:]}


def build_trainer(
    model_path: str,
    examples: list[dict],
    cfg: SFTStageConfig,
    scratch: str,
    seed: int = 0,
    tracker: Tracker | None = None,
    stage: str = "sft",
    save_steps: int = 0,
) -> Any:
    """An SFTTrainer with its dataset tokenised (`trainer.train_dataset` has input_ids and labels, -100
    where no loss is taken); examples longer than `cfg.max_length` are left out (`trainer.dropped_too_long`).
    With `save_steps`, a checkpoint every that many steps in `scratch` (only the newest kept)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tracker = tracker or Tracker()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = [to_prompt_completion(e) for e in examples]
    lengths = [
        len(tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True)["input_ids"]) for r in rows
    ]
    fitting = [r for r, n in zip(rows, lengths, strict=True) if n <= cfg.max_length]
    if not fitting:
        raise DataError(f"sft: all {len(rows)} examples are longer than sft.max_length={cfg.max_length} tokens")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True)
    peft_config = None
    if cfg.lora:
        peft_config = lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    args = SFTConfig(
        output_dir=scratch,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=per_process_accumulation(cfg.grad_accum, "sft.grad_accum"),
        max_length=cfg.max_length,
        completion_only_loss=cfg.assistant_only_loss,
        packing=False,
        bf16=train_bf16(cfg.precision),
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=cfg.gradient_checkpointing,
        train_sampling_strategy=sampling_strategy(cfg),
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=1,
        seed=seed,
        disable_tqdm=True,  # the run's progress view reports the steps (`progress.trainer_callback`)
        **tracker.trainer_args(stage),
    )
    with tracker.trainer_env(stage):
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=datasets.Dataset.from_list(fitting),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[progress.trainer_callback()],
        )
    progress.quiet_trainer(trainer)
    trainer.dropped_too_long = len(rows) - len(fitting)
    return trainer


def sampling_strategy(cfg: SFTStageConfig) -> str:
    """The trainer's `train_sampling_strategy`: length-grouped batches with `cfg.group_by_length` on one process;
    on several (WORLD_SIZE) uniformly shuffled ones, with a warning."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.group_by_length and processes > 1:
        log.warning(
            "sft.group_by_length is left off on %d processes (transformers' length-grouped sampler is not seeded "
            "per process, so they could train on overlapping batches): uniformly shuffled batches",
            processes,
        )
    return "group_by_length" if cfg.group_by_length and processes == 1 else "random"


def train_sft(
    model_path: str,
    examples: list[dict],
    cfg: SFTStageConfig,
    out_dir: Path,
    seed: int = 0,
    log_path: Path | None = None,
    tracker: Tracker | None = None,
    stage: str = "sft",
    lineage: Lineage | None = None,
    method: str = "sft",
    data_file: Path | None = None,
    checkpoints: Path | None = None,
) -> dict:
    """Fine-tune `model_path` on chat `examples` ({"messages": [..., assistant]}) and save the result to
    `out_dir` (fp32 safetensors + tokenizer and a model card from `lineage`, written atomically); every
    trainer log goes to `log_path` and to the `tracker` as `stage`. With `checkpoints` and `sft.save_steps`,
    trainer checkpoints go there and a run killed mid-training resumes from the newest complete one
    made for the same config, start model and data; they are removed once the model is saved."""
    lineage = lineage or Lineage(model_path, str(Path(out_dir).parent), 0, model_path)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # checkpoints on one process only: ranks preparing the folder together would race
    one_process = int(os.environ.get("WORLD_SIZE", "1")) == 1
    keep = checkpoints if checkpoints is not None and cfg.save_steps > 0 and one_process else None
    with tempfile.TemporaryDirectory(prefix="sft-", dir=out_dir.parent) as scratch:
        key = fingerprint(cfg, model_path, model_digest(model_path), examples, seed)
        resume = resume_checkpoint(keep, key) if keep is not None else None
        lm_head_on_labelled_positions_only()
        trainer = build_trainer(
            model_path, examples, cfg, str(keep or scratch), seed, tracker, stage, cfg.save_steps if keep else 0
        )
        if trainer.dropped_too_long:
            log.warning("sft: %d examples longer than %d tokens left out", trainer.dropped_too_long, cfg.max_length)
        if resume is not None:
            log.info("sft: resuming from %s", resume)
        with (tracker or Tracker()).trainer_env(stage):  # wandb/MLflow read their project when training starts
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        metrics = sft_metrics(trainer.state, result.metrics, len(examples), trainer.dropped_too_long)
        metrics["processes"] = trainer.accelerator.num_processes
        metrics["distributed_type"] = trainer.accelerator.distributed_type.value
        metrics["group_by_length"] = trainer.args.train_sampling_strategy == "group_by_length"  # what ran

        def extras(folder: Path) -> None:
            trainer.processing_class.save_pretrained(folder)
            data = {"examples": len(examples), "file": str(data_file) if data_file else None}
            card = model_card(lineage, method, {"sft": dataclasses.asdict(cfg)}, data, metrics)
            (folder / "README.md").write_text(card, encoding="utf-8")

        save_trained(trainer, out_dir, model_path, cfg.lora, extras)
        if trainer.accelerator.is_main_process:
            if log_path is not None:
                write_jsonl(log_path, trainer.state.log_history)
            if keep is not None:
                shutil.rmtree(keep, ignore_errors=True)
    if resume is not None:
        metrics["resumed_from_step"] = int(resume.name.split("-")[1])
    return metrics


def sft_metrics(state: Any, train_metrics: dict, examples: int, dropped_too_long: int) -> dict:
    """Counts, optimizer steps, first and last logged loss, trainer runtime."""
    steps = [h for h in state.log_history if "loss" in h]
    return {
        "examples": examples,
        "dropped_too_long": dropped_too_long,
        "trained_examples": examples - dropped_too_long,
        "steps": state.global_step,
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
        "train_runtime_s": train_metrics.get("train_runtime"),
    }


def main() -> None:
    """Run the seed SFT (iter_0's sft stage) alone, in the loop's child process (`launch.separate_process`)
    or under `accelerate launch`."""
    args = stage_parser(main.__doc__).parse_args()
    cfg, run_paths = stage_setup(args)
    base = base_model(cfg)
    lineage = Lineage(cfg.model, str(run_paths.root), 0, base)
    stage_main(args, lambda: run(cfg.sft, base, run_paths.iteration(0), cfg.seed, Tracker.of(cfg), lineage))


if __name__ == "__main__":
    main()
