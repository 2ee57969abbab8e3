#!/usr/bin/env bash
# Creates .venv and installs reidkit with its notebook and test extras.
# Uses the CPU build of torch unless an NVIDIA GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] GPU found: installing the default (CUDA) torch build"
    .venv/bin/python -m pip install -q "torch>=2.4"
  else
    echo "[setup] no GPU: installing the CPU build torch==2.13.0"
    .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
echo "[setup] installing reidkit[notebooks,dev]"
.venv/bin/python -m pip install -q -e ".[notebooks,dev]"
touch .venv/.installed
echo "[setup] done: $(.venv/bin/python -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__)')"
