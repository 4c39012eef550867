#!/usr/bin/env bash
# Re-resolve the full locks from the pins in pyproject.toml.
# Usage: scripts/lock.sh [VENV_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-.venv}"
cd "$root"
compile=("$venv/bin/pip-compile" --quiet --strip-extras --no-emit-index-url
  --no-emit-find-links --no-emit-trusted-host)
"${compile[@]}" -o requirements/runtime.lock pyproject.toml
"${compile[@]}" --extra dev -o requirements/dev.lock pyproject.toml
echo "locks written: requirements/runtime.lock requirements/dev.lock"
