#!/usr/bin/env bash
# The one-command GPU proof (README "GPU"): the GPU tests, the GPU benchmark, the pack benchmark
# and a paper-settings mini-grid, results (markdown + JSON, one file per stage) in OUT. No network,
# no Snakemake. On a machine without a CUDA GPU every stage runs at smoke size on the CPU.
#   scripts/gpu-check.sh OUT            (or: make gpu-check OUT=dir)
# PYTHON: the interpreter (default python3, a GPU machine's own CUDA build of torch >= 2.11; where
# that has no torch, .venv/bin/python if make install made one);
# GPU_CHECK_BUDGET_S: the time budget of all stages (default 540); FASHION_MNIST_ROOT: the folder
# with the four idx .gz files (default the Debian package's /usr/share/datasets/fashion-mnist).
# bench/gpu_check.py runs the stages: what each needs, budget, exit status.
set -euo pipefail
out=${1:?usage: scripts/gpu-check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)  # before the cd below: OUT may be relative to the caller's directory
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && ! python3 -c 'import torch' 2>/dev/null; then
  echo "gpu-check: python3 cannot import torch; using .venv/bin/python (make install's)"
  py=.venv/bin/python
fi
if ! command -v "$py" >/dev/null; then
  echo "gpu-check: no interpreter $py here; set PYTHON=/path/to/python (3.11 or later)" >&2
  exit 2
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$py" bench/gpu_check.py "$out"
