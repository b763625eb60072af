#!/usr/bin/env bash
# The test suite: make sure the native stack programs are built (cached), lint and format-check
# with ruff and type-check src/ with mypy (both configured in pyproject.toml), then run pytest on
# parallel workers (pytest-xdist; each worker starts its own stack on free ports). With arguments
# (a file, -k ...), only pytest runs, on one process: `make typecheck` type-checks alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cache=${TRAINTEL_CACHE:-$HOME/.cache/traintel}
case "${VIRTUAL_ENV:-}" in
  "$cache"/venvs/*) ;;
  *)
    # Not yet inside traintel's environment (scripts/venv.sh makes it: minutes cold, mostly
    # pip's downloads). The programs are Go builds, CPU-bound and longer: start them now, in the
    # background, on the standard library alone; `traintel stack install` below waits for them
    # through the installer's lock. Targeted runs (arguments) build nothing.
    if [ "$#" -eq 0 ] && [ -f src/traintel/stack/install.py ]; then
      log=$cache/bin/logs/make-test-build.log
      mkdir -p "$(dirname "$log")"
      echo "traintel: building the programs the tests run in the background (log: $log)" >&2
      PYTHONPATH=src nohup "${PYTHON:-python3}" scripts/build_programs.py >"$log" 2>&1 &
    fi
    exec scripts/venv.sh "$0" "$@"
    ;;
esac
if [ -f src/traintel/stack/install.py ]; then
  traintel stack install
fi
# the browser tests (tests/browser.py) drive the system's Chromium: Debian's package, installed
# once where this runs as root; elsewhere they use a chromium on PATH or skip, saying how
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "traintel: installing Chromium for the browser tests (apt-get install chromium)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "traintel: could not install Chromium; the browser tests will skip" >&2
fi
if [ "$#" -eq 0 ]; then
  # the deploy checks' programs (helm, kubeconform, kube-apiserver with etcd, the Prometheus
  # Operator, Thanos): built before pytest (by the background build above on a cold machine),
  # so that a cold build (up to 11 minutes each on 2 cores) runs under no test's timeout
  python scripts/build_programs.py
  python -m ruff check src tests scripts benchmarks
  python -m ruff format --check src tests scripts benchmarks
  python -m mypy
  # tests of one module stay on one worker (its module fixtures start once); the workers share
  # the machine's cores with the programs the tests start
  exec python -m pytest -n "${PYTEST_XDIST_AUTO_NUM_WORKERS:-3}" --dist loadscope
fi
exec python -m pytest "$@"
