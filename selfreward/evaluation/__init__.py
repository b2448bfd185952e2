"""Measuring models and judges:

    judge_metrics  agreement with human labels (pure functions: accuracy with bootstrap intervals, rankings)
    judge_eval     a model as judge vs human labels (`selfreward judge-eval`)
    compare        head-to-head win rates on held-out prompts (`selfreward compare`)
    methods        the loop vs the baselines from the same start (`selfreward compare-methods`)
    instructions   every model of a run on checkable instructions (`selfreward evaluate`)
    persuasion     does a sentence addressed to the grader raise the judge's score? (`selfreward judge-robustness`)
    every_iteration  what `eval.*` measures after each iteration of the loop, as one hook

May import the top-level modules (statistics from `stats`), `loop/` (the judge is the loop's judge),
`constraints/` (the checkers) and `reason/` (the verifier); never `baselines/` or `reporting/`. Results go
to the run folder's judge_eval.json, compare.json, methods.json, evaluate.json,
judge_robustness.json.
"""
