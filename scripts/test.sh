#!/usr/bin/env bash
# The README's test command: install what the tests need on a fresh Debian machine
# (redis-server from Debian's packages, the package with its test extras in .venv), then
# lint, type-check and run the tests. Slow soak/chaos runs are excluded: `-m slow` runs them.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update
    $sudo apt-get install -y redis-server
fi

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,docs]'

.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy
.venv/bin/mkdocs build --strict --quiet  # the API reference: a broken docstring reference fails here
.venv/bin/python -m pytest -m "not slow" "$@"
