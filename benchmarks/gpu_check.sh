#!/usr/bin/env bash
# The prepared GPU check (issue 7). Run from anywhere on a CUDA machine:
#
#     bash benchmarks/gpu_check.sh                 # writes under $OUT, else results/gpu_check
#     bash benchmarks/gpu_check.sh --layers 12     # extra arguments go to gpu_check.py
#     bash benchmarks/gpu_check.sh --dry-run       # no GPU: tiny model, simulated clock
#
# Needs only what a CUDA image has (python3, torch, transformers >= 5.17, pyyaml, scipy, typer,
# rich, nvidia-ml-py): no network, no pip install. moebench runs from this source tree through
# PYTHONPATH. The whole check is capped at 470 s (under 8 minutes); the table it prints last is
# what benchmarks/RESULTS.md records, with the date and the GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TRANSFORMERS_VERBOSITY="${TRANSFORMERS_VERBOSITY:-error}"
OUT_DIR="${OUT:-$ROOT/results/gpu_check}"
mkdir -p "$OUT_DIR"
# calibration artifacts (default vectors, recorded routing) of this random model: throwaway
export MOEBENCH_CACHE="${MOEBENCH_CACHE:-$(mktemp -d)}"
# the project's environment when there is one (the CPU machine's .venv: `--dry-run` needs its
# torch), else the image's python3 (a CUDA machine has torch there); $PYTHON overrides both
if [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; fi
PY="${PYTHON:-python3}"
"$PY" -c 'import torch, transformers, yaml, scipy; print("gpu_check: torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())'
status=0
timeout --signal=INT --kill-after=10 470 "$PY" "$ROOT/benchmarks/gpu_check.py" --out "$OUT_DIR" "$@" \
    2> >(tee "$OUT_DIR/gpu_check.log" >&2) | tee "$OUT_DIR/gpu_check.txt" || status=$?
if [ "$status" -eq 124 ]; then
    echo "gpu_check: stopped at the 470 s cap; rerun with --layers N (fewer) or --time-budget-s" >&2
fi
exit "$status"
