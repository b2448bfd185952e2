"""Other ways to train from the same start, to measure the loop against:

    ppo          PPO in the style of ICE-GRT: actor, frozen reference, critic, reward scaling, KL control
    expert_iter  expert iteration: sample, score, fine-tune on the best answers
    rl_math      the pure maths (GAE, whitening, KL controllers, reward scaling), tested by hand
    rewards      reward sources: the loop's judge, a TRL reward model
    reason       problems with checkable answers: one driver whose methods are a table (`METHODS`: how a
                 round's data is made, how it trains): expert iteration, return-conditioned RL, PPO, DPO
                 with verifier or self-judge pairs (the loop's `select_pair`), measured by maj@1 / maj@k /
                 pass@k / rerank@k

May import the top-level modules, `loop/` (they share its stages and seed SFT) and `reason/` (problems,
verifier, metrics); never `evaluation/` or `reporting/`.
"""
