#!/usr/bin/env bash
# The checks, offline: sets up .venv if needed, then ruff (lint + format) and the test suite, then (full runs) the
# trainer tests with the lowest declared versions (scripts/test_min_versions.sh); nothing comes from the Hugging Face Hub.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# DeepSpeed compiles a small op on first use (~50 s); keep the build inside the work folder so reruns reuse it.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
ruff check .
ruff format --check .
python -m pytest -q "$@"
# a full run (no arguments) also tests the lowest declared versions
if [ "$#" -eq 0 ]; then
  deactivate
  bash scripts/test_min_versions.sh
fi
