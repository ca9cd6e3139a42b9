#!/usr/bin/env bash
# Set up (or reuse) .venv/ and run the main job on the built-in default (Cora, SmolLM2-135M, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/pipeline run "$@"
