"""selfreward: self-rewarding language models (Yuan et al. 2024) with DPO, on a CPU or on GPUs.

The Python API (`selfreward.api`): `load_config`, `iterate`, `evaluate`, `judge_eval`, `plan`.
"""

from selfreward.api import evaluate, iterate, judge_eval, load_config, plan

__all__ = ["load_config", "iterate", "evaluate", "judge_eval", "plan"]
