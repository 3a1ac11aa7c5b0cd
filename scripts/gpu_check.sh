#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): one table of what envgym does on one GPU; downloads nothing.
#   bash scripts/gpu_check.sh          # on a machine with a CUDA GPU and torch
#   bash scripts/gpu_check.sh --cpu    # the same rows at toy sizes on the CPU
# Uses the project's .venv if it has envgym; otherwise makes .venv-gpu-check on top of the machine's own
# packages (torch, transformers, triton: --system-site-packages) with an editable, dependency-free install of
# this tree, and names whatever envgym still lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if ! { [ -x "$PY" ] && "$PY" -c "import envgym.trainers" 2>/dev/null; }; then
  PY=.venv-gpu-check/bin/python
  if [ ! -x "$PY" ]; then
    python3 -m venv --system-site-packages .venv-gpu-check
  fi
  if ! "$PY" -c "import envgym.trainers" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . \
      || { echo "gpu_check: could not install this tree into .venv-gpu-check (needs setuptools>=69 and wheel)" >&2; exit 2; }
  fi
  missing=$("$PY" -c "
import importlib.util
need = ['torch', 'transformers', 'triton', 'gymnasium', 'numpy', 'rich', 'yaml', 'platformdirs', 'filelock',
        'safetensors', 'tensorboard', 'matplotlib']
print(' '.join(m for m in need if importlib.util.find_spec(m) is None))")
  if [ -n "$missing" ]; then
    echo "gpu_check: this Python lacks: $missing (pip install them, or pip download their wheels elsewhere" \
         "and pip install --no-index --find-links DIR)" >&2
    exit 2
  fi
fi
exec "$PY" benchmarks/gpu_check.py "$@"
