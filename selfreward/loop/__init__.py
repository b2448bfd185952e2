"""The paper's loop (Yuan et al. 2024, Fig. 1), one module per stage, each talking to the next only
through the files of iter_K/:

    prompt_gen (1) -> responses (2) -> judge (3) -> pairs (4) -> dpo (5)      one iteration: M_t -> M_{t+1}
    eft + sft                                                                 iter_0: the seed SFT, M0 -> M1
    pipeline                                                                  `run_iteration`, `iterate`

Each stage module declares what its fingerprint covers (`STAGE`, a `runs.Stage`) beside its `run`.

May import the top-level modules (config, records, artifacts, models, generation, inputs, runs, launch,
judge_text, stats) and `constraints/` (the checkers, the generator); never `baselines/`, `evaluation/` or
`reporting/`.
"""
