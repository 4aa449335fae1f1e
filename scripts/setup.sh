#!/usr/bin/env bash
# Set-up step: a virtual environment in .venv, the package and its test extras, and the local model assets.
# On a machine without CUDA it installs the CPU build of torch first (an unpinned torch pulls GBs of CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    python -m pip install -q torch==2.13.0
  fi
fi
python -m pip install -q -e ".[test]"
xrouter-lite fetch-assets
echo "set-up done: activate with '. .venv/bin/activate'"
