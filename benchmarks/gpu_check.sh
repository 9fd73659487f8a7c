#!/usr/bin/env bash
# The CUDA checks of issue 10 in one go (about 10 minutes on one GPU):
#   1. tests/gpu (marker `cuda`): SDPA rewrites and every pack's verify on CUDA;
#   2. the CUDA training-speed table (Llama-style ~1B, BERT-base, GPT-2,
#      T5-small, ViT-base, tiny_llm; eager, dslc per pack, torch.compile,
#      Liger's apply_liger_kernel_to_llama when liger-kernel is installed).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]
set -u
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
timeout 240 "$PY" -m pytest -q -m cuda tests/gpu -p no:cacheprovider 2>&1 | tail -30 | tee "$OUT/gpu_tests.txt"
timeout 420 "$PY" benchmarks/train_speed.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/train_speed_cuda.txt"
