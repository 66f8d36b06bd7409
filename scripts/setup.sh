#!/usr/bin/env bash
# Set up moebench on a fresh machine: a virtualenv in .venv with the CPU build of torch pinned
# first (a bare torch requirement would pull a multi-GB CUDA build), then the package itself.
# On a GPU machine, install your CUDA torch first and set MOEBENCH_TORCH="" to keep it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
TORCH=${MOEBENCH_TORCH-torch==2.13.0}
if [ -n "$TORCH" ]; then
  .venv/bin/python -m pip install -q "$TORCH"
fi
.venv/bin/python -m pip install -q -e '.[dev]'
echo "moebench installed in .venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
