#!/usr/bin/env bash
# Run a command inside traintel's cached virtual environment, creating it first if needed.
#
# The environment lives under ~/.cache/traintel/venvs/, keyed by a hash of pyproject.toml and the
# Python version, so a warm machine pays for the install once and a fresh clone reuses it. The
# running checkout's sources go first on PYTHONPATH, so several checkouts (a fresh clone, a git
# worktree) share one environment at the same time without re-installing anything.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${TRAINTEL_CACHE:-$HOME/.cache/traintel}
python=${PYTHON:-python3}
extras=${TRAINTEL_EXTRAS:-dev}
# keyed by what pip installs (dependencies, extras, entry points), not by the whole file: editing
# pyproject.toml's tool settings (mypy, ruff, the package list) reuses the environment
key=$({ "$python" - "$root/pyproject.toml" <<'PY'
import json, sys
try:
    import tomllib
except ImportError:  # Python 3.10: the whole file, as before
    print(open(sys.argv[1]).read())
    raise SystemExit
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(json.dumps([project.get(k) for k in ("dependencies", "optional-dependencies", "scripts",
                                           "requires-python")], sort_keys=True))
PY
  echo "$extras"; "$python" -VV; } | sha256sum | cut -c1-12)
venv=$cache/venvs/$extras-$key
export PIP_CACHE_DIR=$cache/pip PIP_DISABLE_PIP_VERSION_CHECK=1

mkdir -p "$cache/venvs"
exec 9>"$cache/venvs/.lock"
flock 9   # one installer at a time: parallel test runs share the environment
if [ ! -f "$venv/.complete" ]; then
  echo "traintel: creating the Python environment in $venv (once per machine; torch is large)" >&2
  rm -rf "$venv"
  # each environment is ~6 GB: those no checkout has used for two days go (a changed
  # pyproject.toml makes a new one, and the old ones would fill the disk)
  find "$cache/venvs" -mindepth 2 -maxdepth 2 -name .used -mtime +1 -printf '%h\0' |
    xargs -0 -r rm -rf
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  if ! "$venv/bin/pip" install -q -e "$root[$extras]" >&2; then
    echo "traintel: pip could not install the environment; see the error above" >&2
    exit 1
  fi
  touch "$venv/.complete"
fi
touch "$venv/.used"
exec 9>&-
export PATH=$venv/bin:$PATH VIRTUAL_ENV=$venv PYTHONPATH=$root/src${PYTHONPATH:+:$PYTHONPATH}
exec "$@"
