#!/usr/bin/env bash
# The test suite: make sure the native stack programs are built (cached), lint and format-check
# with ruff and type-check src/ with mypy (both configured in pyproject.toml), then run pytest on
# parallel workers (pytest-xdist; each worker starts its own stack on free ports). With arguments
# (a file, -k ...), only pytest runs, on one process: `make typecheck` type-checks alone.
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
  # the deploy checks' programs (helm, kubeconform, kube-apiserver with etcd, the operators,
  # Thanos): built once into the cache here, before pytest, so that a cold build (up to 14
  # minutes each on 2 cores) runs once, serially, and under no test's timeout
  python -c 'from traintel.stack import install
from traintel.stack.components import DEPLOY_TOOLS
install.install(table=DEPLOY_TOOLS, say=lambda line: print(line, flush=True))'
  python -m ruff check src tests scripts benchmarks
  python -m ruff format --check src tests scripts benchmarks
  python -m mypy
  # tests of one module stay on one worker (its module fixtures start once); the workers share
  # the machine's cores with the programs the tests start
  exec python -m pytest -n "${PYTEST_XDIST_AUTO_NUM_WORKERS:-3}" --dist loadscope
fi
exec python -m pytest "$@"
