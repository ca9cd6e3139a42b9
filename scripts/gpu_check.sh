#!/usr/bin/env bash
# The whole pipeline on one CUDA GPU, offline, within 5 minutes: prints a PASS/FAIL table and
# exits non-zero on any FAIL (2 when no GPU is visible). What it checks: scripts/gpu_check.py.
#   bash scripts/gpu_check.sh [--out DIR] [--json FILE]
# PYTHON: the interpreter with CUDA torch (default .venv/bin/python); VLLM_PYTHON: one that
# imports vllm, for the vLLM encode (default .venv-vllm/bin/python, else skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout 300 "${PYTHON:-.venv/bin/python}" scripts/gpu_check.py "$@"
