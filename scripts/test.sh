#!/usr/bin/env bash
# Set up (or reuse) .venv/ and run the default test suite: CPU, offline, no slow/gpu tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -m "not slow and not gpu" "$@"
