#!/usr/bin/env bash
# The whole GPU table of issue 14 in one call on a lent H100/H200 (under 5 minutes; each step has its own timeout, so
# a slow step costs its rows, not the rest):
#   1. exactness on the GPU: float32 / options / bf16 vs transformers, token weights, compiled vs eager, peers vs ours
#   2. no host sync on the real GPU: every registered loss, forward + backward, under set_sync_debug_mode("error")
#   3. causal-LM time and memory, bf16 and fp32, 8192 x 32000 and 8192 x 128256: hf, ours (+eager), liger, cce
#   4. loss_speed on CUDA (cross_entropy / dice / tversky / focal vs their peers)
#   5. trainer throughput on CUDA (plain, GA 4, composite with components logged)
#
# Needs the wheels in .whl/ (torch, triton and transformers are on the machine):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#     liger-kernel==0.8.5 cut-cross-entropy==25.1.1 monai==1.6.1
# Run from the repository root:  bash benchmarks/gpu_lm_loss.sh    (files land in $OUT, else /tmp/gpu_lm_loss)
set -uo pipefail
OUT_DIR="${OUT:-/tmp/gpu_lm_loss}"
mkdir -p "$OUT_DIR"
START=$(date +%s)
step() { echo; echo "== $1 (t=$(( $(date +%s) - START )) s)"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/liger_kernel-*.whl .whl/cut_cross_entropy-*.whl .whl/monai-*.whl \
  || echo "wheels not installed: liger/cce rows and the MONAI peers will be skipped"
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -c "import triton; print('triton', triton.__version__)" || true

step "1. exactness on the GPU"
timeout 100 python3 benchmarks/gpu_lm_loss.py 2>&1 | tee "$OUT_DIR/gpu_checks.txt"

step "2. no host sync on the GPU (every registered loss) and the CUDA test of causal_lm"
timeout 60 python3 -m pytest -q -p no:cacheprovider -k "real_gpu or cuda" \
  tests/losses/test_no_host_sync.py tests/losses/test_language.py 2>&1 | tail -15 | tee "$OUT_DIR/pytest.txt"

step "3a. causal-LM time and memory, bf16"
timeout 75 python3 benchmarks/lm_loss_memory.py --device cuda --dtype bfloat16 --cases 8192x32000,8192x128256 \
  --methods hf,ours,ours:eager,liger,cce --json "$OUT_DIR/bf16.json" 2>&1 | tee "$OUT_DIR/bf16_table.txt"

step "3b. causal-LM time and memory, float32"
timeout 45 python3 benchmarks/lm_loss_memory.py --device cuda --dtype float32 --cases 8192x32000,8192x128256 \
  --methods hf,ours,liger --json "$OUT_DIR/float32.json" 2>&1 | tee "$OUT_DIR/float32_table.txt"

step "4. loss_speed on CUDA"
timeout 30 python3 benchmarks/loss_speed.py --devices cuda --repeats 20 2>&1 | tee "$OUT_DIR/loss_speed_cuda.txt"

step "5. trainer throughput on CUDA"
timeout 60 python3 benchmarks/trainer_throughput.py --device cuda --repeats 2 --steps 30 2>&1 \
  | grep -v WARNING | tee "$OUT_DIR/trainer_cuda.txt"

step "done"
