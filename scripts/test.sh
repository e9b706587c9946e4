#!/usr/bin/env bash
# The README's test command: install what the tests need on a fresh Debian machine
# (redis-server and chromium from Debian's packages, the package with its test extras in .venv), then
# lint, type-check and run the tests. Slow soak/chaos runs are excluded: `-m slow` runs them.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
# The dashboard's browser test drives Debian's chromium through Playwright (never Playwright's
# own browser download); it skips, saying why, where chromium cannot be installed.
[ -x /usr/bin/chromium ] || missing="$missing chromium"
if [ -n "$missing" ]; then
    $sudo apt-get update
    $sudo apt-get install -y redis-server
    if [[ "$missing" == *chromium* ]]; then
        $sudo apt-get install -y chromium || echo "chromium could not be installed: the browser test will skip" >&2
    fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,docs]'

.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy
.venv/bin/mkdocs build --strict --quiet  # the API reference: a broken docstring reference fails here
.venv/bin/python -m pytest -m "not slow" "$@"
