#!/usr/bin/env bash
# The test suite: make sure the native stack programs are built (cached), type-check src/ with
# mypy (configured in pyproject.toml), then run pytest. With arguments (a file, -k ...), only
# pytest runs: `make typecheck` type-checks alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -f src/traintel/stack/install.py ]; then
  traintel stack install
fi
# the browser tests (tests/browser.py) drive the system's Chromium: Debian's package, installed
# once where this runs as root; elsewhere they use a chromium on PATH or skip, saying how
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "traintel: installing Chromium for the browser tests (apt-get install chromium)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "traintel: could not install Chromium; the browser tests will skip" >&2
fi
if [ "$#" -eq 0 ]; then
  python -m mypy
fi
exec python -m pytest "$@"
