#!/usr/bin/env bash
# GPU run of the causal-LM loss checks and memory/time table (one call on a lent H100/H200, under 5 minutes).
#
# Needs the wheels in .whl/ (liger-kernel, cut-cross-entropy; torch, triton and transformers are on the machine):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#     liger-kernel==0.8.5 cut-cross-entropy==25.1.1
# Run from the repository root:  bash benchmarks/gpu_lm_loss.sh    (files land in $OUT, else /tmp/gpu_lm_loss)
set -uo pipefail
OUT_DIR="${OUT:-/tmp/gpu_lm_loss}"
mkdir -p "$OUT_DIR"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/liger_kernel-*.whl .whl/cut_cross_entropy-*.whl || echo "wheels not installed: liger/cce rows will be skipped"
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -c "import triton; print('triton', triton.__version__)" || true

echo "== exactness on the GPU"
timeout 60 python3 benchmarks/gpu_lm_loss.py 2>&1 | tee "$OUT_DIR/gpu_checks.txt"

echo "== tests/losses/test_language.py (its CUDA test runs here)"
timeout 45 python3 -m pytest -q -p no:cacheprovider tests/losses/test_language.py 2>&1 | tail -5 | tee "$OUT_DIR/pytest.txt"

echo "== bf16 memory/time table"
timeout 150 python3 benchmarks/lm_loss_memory.py --device cuda --dtype bfloat16 \
  --cases 8192x32000,8192x128000,2048x32000,2048x128000 --methods hf,naive,ours,ours@1024,liger,cce --json "$OUT_DIR/bf16.json" 2>&1 | tee "$OUT_DIR/bf16_table.txt"

echo "== float32 memory/time table"
timeout 45 python3 benchmarks/lm_loss_memory.py --device cuda --dtype float32 --cases 8192x32000,8192x128000 \
  --methods hf,ours,liger --json "$OUT_DIR/float32.json" 2>&1 | tee "$OUT_DIR/float32_table.txt"
