#!/usr/bin/env bash
# Create (or refresh) the project environment from the full lock.
# Usage: scripts/venv.sh [VENV_DIR] [PYTHON]
#   VENV_DIR  where to put it (default .venv)
#   PYTHON    interpreter, 3.11 or 3.12 (default python3)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-.venv}"
python="${2:-python3}"
cd "$root"

if ! "$python" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
  echo "error: $python is $("$python" -V 2>&1); mlferry needs Python 3.11 or 3.12" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# pip 23 cannot read some packages' metadata in the lock; the pinned pip can.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pip==26.3"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r requirements/dev.lock
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
"$venv/bin/python" -m pip check
echo "environment ready: $venv"
