#!/usr/bin/env bash
# The trainer, exactness and compatibility tests again, in .venv-min with the LOWEST versions pyproject.toml declares
# (.ci/constraints-min.txt): a declared version is a tested version. Set-up happens once (re-run when the pins change).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
stamp=".venv-min/.hf-losses-setup"
want=$(cat pyproject.toml .ci/constraints-min.txt scripts/test_min_versions.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -d .venv-min ] || "$PYTHON" -m venv .venv-min
  . .venv-min/bin/activate
  echo "hf-losses: installing the minimum versions into .venv-min..."
  python -m pip install -q --upgrade pip
  python -m pip install -q -c .ci/constraints-min.txt torch==2.13.0
  python -m pip install -q -c .ci/constraints-min.txt -e ".[test]" peft scikit-learn
  echo "$want" > "$stamp"
  deactivate
fi
. .venv-min/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -c "import transformers, accelerate, datasets; print('minimum versions: transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__)"
python -m pytest -q tests/trainers tests/test_compat.py tests/test_tasks.py tests/distributed/test_multiprocess_exactness.py \
  tests/distributed/test_seq2seq_multiprocess.py tests/distributed/test_nonfinite_multiprocess.py
