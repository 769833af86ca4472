#!/usr/bin/env bash
# The README's second command (and CI's): install esrag with test extras, then run lint and every test.
# The integration tests start what they need themselves: noida-db (an ES-8.15-compatible server) and a
# llama.cpp OpenAI-compatible server, both installed by the [test] extra. Set ESRAG_TEST_ES_URL to run
# them against a real cluster instead, or ESRAG_TEST_DOCKER=1 to use docker-compose.yml's Elasticsearch.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
echo "==> installing esrag[test] into .venv (first run compiles llama-cpp-python: ~6 min)"
scripts/setup_env.sh test
# tests/unit/test_compose.py validates docker-compose.yml with `docker compose config`.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  echo "==> installing docker-compose (to validate docker-compose.yml)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq docker-compose >/dev/null; fi
fi
echo "==> ruff"
.venv/bin/ruff check esrag tests scripts
echo "==> mypy"
.venv/bin/mypy esrag
echo "==> pytest"
.venv/bin/pytest "$@"
