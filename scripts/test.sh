#!/usr/bin/env bash
# The test suite: make sure the native stack programs are built (cached), then run pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -f src/traintel/stack/install.py ]; then
  traintel stack install
fi
exec python -m pytest "$@"
