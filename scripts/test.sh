#!/usr/bin/env bash
# The test suite: make sure the native stack programs are built (cached), type-check src/ with
# mypy (configured in pyproject.toml), then run pytest. With arguments (a file, -k ...), only
# pytest runs: `make typecheck` type-checks alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -f src/traintel/stack/install.py ]; then
  traintel stack install
fi
if [ "$#" -eq 0 ]; then
  python -m mypy
fi
exec python -m pytest "$@"
