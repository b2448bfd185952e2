"""Problems with checkable answers (Havrilla et al. 2024, "Teaching Large Language Models to Reason with
Reinforcement Learning"): a reward that needs no judge, because the final answer can be checked.

    problems   Problem rows; our own generator of arithmetic word problems with a difficulty knob and
               disjoint train/test splits; the loader of user files ({prompt, answer} or GSM8K-style
               {question, answer ending in `#### N`}); writing problem files
    verifier   pure functions: extract a final answer from a model's text, read it as an exact number,
               compare it with the reference (`verify` -> Verdict with the reason when unreadable)

    metrics    pure metrics over verified answers: pass@k (unbiased), maj@k, rerank@k, judge accuracy on
               (correct, incorrect) pairs; the intervals are `stats`'s

The methods that train on these problems (expert iteration, return-conditioned RL, DPO with verifier or
judge pairs) are `baselines/reason.py`.

Import rule: may import the top-level modules (`artifacts`, `records`, `errors`, `config`, ...), never
`loop/`, `baselines/`, `evaluation/` or `reporting/`. Nothing here loads a model.
"""
