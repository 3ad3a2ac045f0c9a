#!/usr/bin/env bash
# Issue #18's GPU measurement: benchmarks/gpu.sh OUT_DIR [speed|table|all] [--dry-run] [gpu.py options]
# Each part fits one device command of 9 minutes on one H100; --dry-run does the same steps on the CPU in a few
# minutes. What it measures and how to run it on a lent GPU: docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's virtual environment where there is one; on the device machine, its python3 holds PyTorch.
PYTHON=${PYTHON:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else command -v python3; fi)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu.py "$@"
