"""What the loop measures after each iteration (`eval.*`), as one hook for `loop.pipeline.iterate`:

- `eval.judge_labels`: the new model's judge accuracy against human labels (`judge_eval.after_iteration`);
- `eval.persuasion_items`: how far a sentence addressed to the evaluator moves the new model's scores
  (`persuasion.after_iteration`);
- `eval.every_iteration`: every model of the run on checkable instructions (`instructions.after_iteration`), and
  with `eval.stop_if_worse` the signal to stop.

The loop never imports evaluation/: the CLI and the Python API pass this hook in.
"""

from __future__ import annotations

from collections.abc import Callable

from selfreward.artifacts import RunPaths
from selfreward.config import RunConfig

Hook = Callable[[RunPaths, int], bool]


def after_iteration(cfg: RunConfig) -> Hook | None:
    """The hook the config asks for (None when it asks for none); True from it stops the run."""
    hooks: list[Hook] = []
    if cfg.eval.judge_labels:
        from selfreward.evaluation import judge_eval

        hooks.append(judge_eval.after_iteration(cfg))
    if cfg.eval.persuasion_items:
        from selfreward.evaluation import persuasion

        hooks.append(persuasion.after_iteration(cfg))
    if cfg.eval.every_iteration:
        from selfreward.evaluation import instructions

        hooks.append(instructions.after_iteration(cfg))
    if not hooks:
        return None

    def hook(run: RunPaths, k: int) -> bool:
        return any([h(run, k) for h in hooks])  # a list: every measurement runs, even after a stop signal

    return hook
