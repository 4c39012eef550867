#!/usr/bin/env bash
# Create the tools environment (.venv-tools/) from requirements/tools.lock.
#
# checkov pins versions that clash with mlflow's, so it lives in an environment of its
# own; the manifest tests look for it at .venv-tools/bin/checkov. Re-running is cheap:
# nothing happens while the lock is unchanged.
#
# Knobs (environment):
#   PYTHON      interpreter for the new environment (default: python3)
#   TOOLS_VENV  where to create it (default: .venv-tools in the repo root)
#   VENV        project environment whose pip-compile re-locks (default: .venv)
#
# Usage: scripts/tools-venv.sh           create or update the environment
#        scripts/tools-venv.sh --lock    re-resolve requirements/tools.lock from tools.in
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
TOOLS_VENV=${TOOLS_VENV:-$ROOT/.venv-tools}
VENV=${VENV:-$ROOT/.venv}
IN=$ROOT/requirements/tools.in
LOCK=$ROOT/requirements/tools.lock

usage() {
  sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

lock() {
  if [[ ! -x "$VENV/bin/pip-compile" ]]; then
    echo "tools-venv.sh: $VENV/bin/pip-compile not found; run 'make venv' first" >&2
    exit 1
  fi
  # Relative paths, so the command recorded in the lock's header is the same anywhere.
  cd "$ROOT"
  "$VENV/bin/pip-compile" --quiet --no-emit-find-links --no-emit-index-url \
    --strip-extras --output-file="${LOCK#"$ROOT"/}" "${IN#"$ROOT"/}"
  echo "tools-venv.sh: wrote $LOCK"
}

install() {
  local stamp=$TOOLS_VENV/.installed want
  want=$(sha256sum "$LOCK" | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "tools-venv.sh: $TOOLS_VENV is up to date with requirements/tools.lock"
    return
  fi

  # A half-built environment must not look finished, so the stamp is written last.
  rm -rf "$TOOLS_VENV"
  trap 'rm -rf "$TOOLS_VENV"; echo "tools-venv.sh: failed; removed $TOOLS_VENV" >&2' ERR
  "$PYTHON" -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install --quiet --require-virtualenv -r "$LOCK"
  "$TOOLS_VENV/bin/pip" check
  trap - ERR
  echo "$want" >"$stamp"
  echo "tools-venv.sh: $("$TOOLS_VENV/bin/checkov" --version | tail -n1 | sed 's/^/checkov /')"
}

case "${1:-}" in
  "") install ;;
  --lock) lock ;;
  -h | --help) usage ;;
  *)
    echo "tools-venv.sh: unknown argument '$1'" >&2
    usage
    ;;
esac
