#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu_check.py says what it runs and its tolerances):
#   bash benchmarks/gpu_check.sh [--examples 256] [--models minilm mpnet ...]
# Stops after GPU_CHECK_TIMEOUT seconds (default 300: the check is meant to take at most five minutes on one GPU).
# Exit status: 0 within tolerance, 1 a tolerance failed, 2 a usage error, 3 no CUDA device (nothing run), 124 over the time limit.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec timeout "${GPU_CHECK_TIMEOUT:-300}" "$PYTHON" benchmarks/gpu_check.py "$@"
