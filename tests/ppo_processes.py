"""Two PPO updates of the tiny model on fixed responses, for tests/test_distributed.py: run under torchrun on 2
processes and alone on 1 (`python -m tests.ppo_processes --model M --out DIR`), both see the same rollouts, so
their updates can be compared. Writes DIR/model (the actor), DIR/critic.safetensors and DIR/log.jsonl."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from selfreward.baselines.ppo import PPOTrainer
from selfreward.baselines.rewards import RewardFunction
from selfreward.config import PPOConfig

PROMPTS = [f"Tell me about the number {i}." for i in range(8)]


class FixedResponses(PPOTrainer):
    """The response to a prompt is a function of the prompt alone (not of the share it is in); those to odd
    numbers are cut at `max_new_tokens` (no end-of-sequence token)."""

    def sample(self, prompts: list[str]) -> tuple[list[list[int]], torch.Tensor]:
        ids = [self.encode_prompt(p) for p in prompts]
        responses = []
        for p in prompts:
            i = int(p.split()[-1].rstrip("."))
            text = f"It is {i}, " * (1 + i % 4)
            tokens = self.tokenizer(text * 4 if i % 2 else text, add_special_tokens=False)["input_ids"]
            cut = tokens[: self.cfg.max_new_tokens]
            responses.append(cut if i % 2 else tokens[: self.cfg.max_new_tokens - 1] + [self.eos_ids[0]])
        P, R = max(len(x) for x in ids), max(len(x) for x in responses)
        pad = self.tokenizer.pad_token_id
        rows = [[pad] * (P - len(q)) + q + r + [pad] * (R - len(r)) for q, r in zip(ids, responses, strict=True)]
        return ids, torch.tensor(rows, device=self.device)


class CharacterReward(RewardFunction):
    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        self.unscored = 0
        return [len(r) % 7 / 6 for r in responses]


def main() -> None:
    from accelerate.utils import set_seed
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    set_seed(0)
    cfg = PPOConfig(
        rollout_batch_size=4,
        minibatch_size=2,
        ppo_epochs=2,
        max_new_tokens=12,
        learning_rate=1e-3,
        critic_learning_rate=1e-3,
        precision="fp32",
    )
    trainer = FixedResponses(cfg, args.model, CharacterReward(), seed=0)
    out = Path(args.out)
    trainer.train(PROMPTS, 2, out / "log.jsonl")
    trainer.save_policy(out / "model")
    if trainer.accelerator.is_main_process:
        critic = trainer.accelerator.unwrap_model(trainer.critic)
        save_file({k: v.contiguous() for k, v in critic.state_dict().items()}, out / "critic.safetensors")
    trainer.accelerator.wait_for_everyone()
    print(f"processes {trainer.world}")


if __name__ == "__main__":
    main()
