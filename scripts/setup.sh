#!/usr/bin/env bash
# Set-up step: a virtual environment in .venv, the package and its test extras at the tested versions
# (constraints.txt), and the local model assets.
#
# torch: with a working NVIDIA driver (nvidia-smi), the default index's torch (the CUDA build). Without one, the
# CPU build from the PyTorch CPU wheel index (https://download.pytorch.org/whl/cpu, ~200 MB instead of several GB
# of CUDA wheels); when that index cannot be reached (checked with a 5-second probe), the default index is used
# instead, with a note (on Linux that is the CUDA build: it works on the CPU but is a large download).
#   PYTHON=python3.10 VENV=.venv310 bash scripts/setup.sh   # another interpreter, another environment
#   TORCH_CPU_INDEX=URL bash scripts/setup.sh     # another CPU wheel index (a mirror)
#   bash scripts/setup.sh --torch-only --dry-run  # print the torch decision and command, install nothing
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
PROBE_TIMEOUT_S=${PROBE_TIMEOUT_S:-5}
CONSTRAINTS=(-c constraints.txt)
TORCH_ONLY=0
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --torch-only) TORCH_ONLY=1 ;;
    --dry-run) DRY_RUN=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

run() {  # run a command, or only print it with --dry-run
  echo "+ $*"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

index_reachable() {  # a quick probe, so an unreachable index costs seconds, not pip's retries
  "$PIP_PY" - "$1" "$PROBE_TIMEOUT_S" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=float(sys.argv[2])).read(1)
EOF
}

install_torch() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "torch: NVIDIA driver found: the CUDA build from the default index"
    run "$PIP_PY" -m pip install -q "${CONSTRAINTS[@]}" "torch==$TORCH_VERSION"
  elif index_reachable "$TORCH_CPU_INDEX"; then
    echo "torch: no NVIDIA driver: the CPU build from $TORCH_CPU_INDEX"
    if ! run "$PIP_PY" -m pip install -q --timeout 30 --retries 1 --index-url "$TORCH_CPU_INDEX" \
        --extra-index-url https://pypi.org/simple "${CONSTRAINTS[@]}" "torch==$TORCH_VERSION+cpu"; then
      echo "note: the install from $TORCH_CPU_INDEX failed; falling back to the default index" >&2
      run "$PIP_PY" -m pip install -q "${CONSTRAINTS[@]}" "torch==$TORCH_VERSION"
    fi
  else
    echo "note: no NVIDIA driver, and the PyTorch CPU index ($TORCH_CPU_INDEX) is unreachable: installing torch" \
         "from the default index (on Linux that may be the CUDA build, a download of several GB; it runs on the CPU too)" >&2
    run "$PIP_PY" -m pip install -q "${CONSTRAINTS[@]}" "torch==$TORCH_VERSION"
  fi
}

if [ "$TORCH_ONLY" = 1 ]; then  # the torch step alone (tests, or a venv you already have)
  PIP_PY=$PY
  install_torch
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
PIP_PY=python
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  install_torch
fi
python -m pip install -q "${CONSTRAINTS[@]}" -e ".[test]"
xrouter-lite fetch-assets
echo "set-up done: activate with '. $VENV/bin/activate'"
