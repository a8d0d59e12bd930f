#!/usr/bin/env bash
# The main job: sets up .venv if needed, then fine-tunes MiniLM on imbalanced real text with CE vs an imbalance loss.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
hf-losses demo "$@"
