#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py): on one H100/H200, within 8 minutes,
# nothing downloaded. Needs the project installed with a CUDA torch and the llm extra
# (pip install -e '.[llm]'); writes $OUT/gpu_check.json (else demo-output/gpu_check.json).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 470 "$PYTHON" benchmarks/gpu_check.py "$@"
