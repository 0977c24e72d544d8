#!/usr/bin/env bash
# One CUDA GPU, random weights, under 8 minutes: predict ms/image at batch 1/8/32 against bare encode_image,
# one class trained with the paper's 100 + 50 epochs against its floor, bf16 against fp32 maps, peak GPU
# memory (details: bench/gpu_check.py). Quote its output with the card's name (printed first).
#   bench/gpu_check.sh [extra options of bench/gpu_check.py]
# Without a CUDA GPU it stops at once with one line and exit code 2; past 8 minutes it is stopped (exit 124).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no CUDA GPU here (nvidia-smi finds none); run it on a machine with one, or run" \
       "'$PY bench/gpu_check.py --device cpu --tiny' for a dry run" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
start=$(date +%s)
timeout 480 "$PY" bench/gpu_check.py --device "${DEVICE:-cuda}" "$@"
rc=$?
if [ "$rc" -eq 124 ]; then
  echo "gpu_check: stopped after 8 minutes (the target is under 8); the figures above are partial" >&2
fi
echo "gpu_check: $(( $(date +%s) - start )) s in all"
exit "$rc"
