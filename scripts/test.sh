#!/usr/bin/env bash
# The test suite. Usage: bash scripts/test.sh [--fast] [pytest args]
#   (no flag)  the whole suite, from a fresh machine: Python packages, Debian's chromium for the browser tests
#              (never `playwright install`), ruff, then every test (CI runs this; about 13 minutes on 2 cores)
#   --fast     the loop while you work: ruff, then the unit and app tests without the browser (tests/e2e) and
#              without the per-family proofs (tests/architectures); installs nothing (about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fast" ]; then
    shift
    python3 -m ruff check .
    exec python3 -m pytest tests/unit tests/app -q -m "not e2e" "$@"
fi
python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium fonts-noto-cjk fonts-noto-color-emoji >/dev/null
fi
python3 -m ruff check .
python3 -m pytest "$@"
