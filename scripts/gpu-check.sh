#!/usr/bin/env bash
# The one-command GPU proof (README "GPU"): on a machine with one CUDA GPU and the project's
# Python dependencies (torch >= 2.11 with CUDA and its torchvision, h5py, numpy, pandas, pytest, pyyaml,
# jsonschema, pillow and scipy for the streamed-ImageNet test;
# no Snakemake, no network), run the GPU tests, the GPU benchmark and a paper-settings mini-grid
# on Fashion-MNIST, and write markdown + JSON results into OUT.
#   scripts/gpu-check.sh OUT            (or: make gpu-check OUT=dir)
# PYTHON picks the interpreter (default python3); FASHION_MNIST_ROOT the folder with the four
# idx .gz files (default: the Debian package's /usr/share/datasets/fashion-mnist).
set -uo pipefail
out=${1:?usage: scripts/gpu-check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$py" -c 'import torch' 2>/dev/null || { echo "gpu-check: $py cannot import torch; set PYTHON=/path/to/python" >&2; exit 2; }
"$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu-check: torch sees no CUDA GPU")' || exit 2
"$py" -c 'import torch; print("gpu-check:", torch.cuda.get_device_name(), "torch", torch.__version__, "CUDA", torch.version.cuda)' \
  | tee "$out/device.txt"
status=0
SECONDS=0
"$py" -m pytest -m gpu tests/test_gpu.py tests/test_imagenet.py -q -p no:cacheprovider --junitxml="$out/gpu-tests.xml" 2>&1 \
  | tee "$out/gpu-tests.log" || status=1
echo "gpu-check: tests took ${SECONDS}s"
"$py" bench/bench_gpu.py --out "$out" || status=1
"$py" bench/bench_pack.py --device cuda --k 8 --no-write | tee "$out/bench_pack.md" || status=1
echo "gpu-check: tests and benchmark took ${SECONDS}s"
"$py" bench/gpu_minigrid.py --out "$out" ${FASHION_MNIST_ROOT:+--root "$FASHION_MNIST_ROOT"} || status=1
echo "gpu-check: all took ${SECONDS}s; results in $out (status $status)"
exit $status
