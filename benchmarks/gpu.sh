#!/usr/bin/env bash
# The GPU measurements (issues #18, #23): benchmarks/gpu.sh OUT_DIR [speed|table|all|call|merge] [--dry-run] [options]
# Each part fits one device command of 9 minutes; --dry-run does the same steps on the CPU, with smaller defaults,
# in under a minute (--help). An unusable option is refused in one line, exit status 2, before anything starts.
# What it measures and how to run it on a lent GPU: docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's virtual environment where there is one; on the device machine, its python3 holds PyTorch.
PYTHON=${PYTHON:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else command -v python3; fi)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu.py "$@"
