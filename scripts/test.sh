#!/usr/bin/env bash
# The whole test suite, from a fresh machine: Python packages, Debian's chromium for the browser tests
# (never `playwright install`), ruff, then pytest. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium fonts-noto-cjk fonts-noto-color-emoji >/dev/null
fi
python3 -m ruff check .
python3 -m pytest "$@"
