"""Other ways to train from the same start, to measure the loop against:

    ppo          PPO in the style of ICE-GRT: actor, frozen reference, critic, reward scaling, KL control
    expert_iter  expert iteration: sample, score, fine-tune on the best answers
    rl_math      the pure maths (GAE, whitening, KL controllers, reward scaling), tested by hand
    rewards      reward sources: the loop's judge, a TRL reward model

May import the top-level modules and `loop/` (they share its stages and seed SFT); never `evaluation/`
or `reporting/`.
"""
