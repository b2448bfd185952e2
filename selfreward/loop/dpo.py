"""Stage 5: TRL's DPOTrainer turns M_t and the iteration's pairs into M_{t+1}.

Reads  iter_K/pairs/ (datasets on disk), the model folder of M_t (and, when `dpo.reference: initial`,
       of the run's first model: M1 of the seed SFT, or M0 with `seed_sft: false`)
Writes iter_K/model/ (M_{t+1}, fp32 safetensors + tokenizer), iter_K/dpo_log.jsonl (every
       trainer log: loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies)

With fewer than `dpo.min_pairs` pairs the step is skipped: M_t is copied to model/ and the
metrics say `skipped`. On CPU, bf16 autocast needs `use_cpu=True`; gradient checkpointing is
set from the config (TRL turns it on by default). The model is saved in fp32: DPO updates at
these learning rates are smaller than bf16's resolution for most weights.

Multi-GPU: the stage alone runs under `accelerate launch --config_file configs/accelerate_zero3.yaml
-m selfreward.loop.dpo --run iterations/<run> --iter K`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from selfreward.artifacts import IterPaths, RunPaths, atomic_path, write_jsonl
from selfreward.config import DPOStageConfig, load_config, train_bf16
from selfreward.models import copy_model, lora_config, model_of_iteration, reference_for

log = logging.getLogger(__name__)


def run(cfg: DPOStageConfig, policy: str, reference: str | None, it: IterPaths, seed: int = 0) -> dict:
    """Train M_{t+1} from `policy` (M_t) on `it.pairs_dataset`; `reference` None means M_t itself."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    dataset = datasets.load_from_disk(str(it.pairs_dataset))
    if len(dataset) < cfg.min_pairs:
        log.warning(
            "DPO skipped: %d pairs, fewer than dpo.min_pairs=%d; the next model is this iteration's model unchanged",
            len(dataset),
            cfg.min_pairs,
        )
        copy_model(policy, it.model)
        write_jsonl(it.dpo_log, [])
        return {"skipped": True, "reason": f"{len(dataset)} pairs < min_pairs {cfg.min_pairs}", "pairs": len(dataset)}

    dataset = dataset.select_columns(["prompt", "chosen", "rejected"])
    on_gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32) if reference else None
    peft_config = None
    if cfg.lora:
        peft_config = lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    with tempfile.TemporaryDirectory(prefix="dpo-", dir=it.root) as scratch:
        args = DPOConfig(
            output_dir=scratch,
            beta=cfg.beta,
            learning_rate=cfg.learning_rate,
            num_train_epochs=cfg.epochs,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            max_length=cfg.max_length,
            precompute_ref_log_probs=cfg.precompute_ref_log_probs,
            bf16=train_bf16(cfg.precision),
            use_cpu=not on_gpu,
            gradient_checkpointing=cfg.gradient_checkpointing,
            logging_steps=cfg.logging_steps,
            save_strategy="no",
            report_to="none",
            seed=seed,
            disable_tqdm=False,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        result = trainer.train()
        trained = trainer.model
        if cfg.lora:
            trained = trained.merge_and_unload()
        if trainer.accelerator.is_main_process:
            with atomic_path(it.model) as tmp:
                trainer.accelerator.unwrap_model(trained).save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
            write_jsonl(it.dpo_log, trainer.state.log_history)
    return dpo_metrics(trainer.state.log_history, result.metrics, len(dataset))


def dpo_metrics(history: list[dict], train_metrics: dict, pairs: int) -> dict:
    steps = [h for h in history if "loss" in h]

    def last(key: str) -> float | None:
        values = [h[key] for h in steps if key in h]
        return values[-1] if values else None

    def mean(key: str) -> float | None:
        values = [h[key] for h in steps if key in h]
        return sum(values) / len(values) if values else None

    return {
        "skipped": False,
        "pairs": pairs,
        "steps": len(steps),
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": last("loss"),
        "mean_reward_margin": mean("rewards/margins"),
        "last_reward_margin": last("rewards/margins"),
        "mean_reward_accuracy": mean("rewards/accuracies"),
        "train_runtime_s": train_metrics.get("train_runtime"),
    }


def main() -> None:
    """Run the DPO stage of one iteration alone (e.g. under `accelerate launch`)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--run", required=True, help="iterations/<run>")
    parser.add_argument("--iter", type=int, required=True)
    args = parser.parse_args()
    run_paths = RunPaths(Path(args.run))
    cfg = load_config(run_paths.config)
    policy = model_of_iteration(cfg, run_paths, args.iter - 1)
    run(cfg.dpo, policy, reference_for(cfg, run_paths, args.iter), run_paths.iteration(args.iter), cfg.seed)


if __name__ == "__main__":
    main()
