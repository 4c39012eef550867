#!/usr/bin/env bash
# Set up what the tests need, then run them: `scripts/test.sh [PYTEST ARGS...]`.
# Container tests need a Docker engine: this script starts one when it can (root with
# Debian's docker.io) and stops it afterwards; without one they skip and say why.
# Knobs (env): MLFERRY_TEST_DOCKER=0 skips starting an engine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

engine_started=0
cleanup() {
  if [ "$engine_started" = 1 ]; then scripts/docker-engine.sh stop || true; fi
}
trap cleanup EXIT

if [ "${MLFERRY_TEST_DOCKER:-1}" != 0 ] && [ -x scripts/docker-engine.sh ]; then
  already=0
  scripts/docker-engine.sh status >/dev/null 2>&1 && already=1
  if scripts/docker-engine.sh start >/dev/null; then
    [ "$already" = 1 ] || engine_started=1
  else
    echo "note: no Docker engine; container tests will be skipped" >&2
  fi
fi
if [ -x scripts/tools-venv.sh ]; then
  scripts/tools-venv.sh >/dev/null ||
    echo "note: policy tools (checkov) unavailable; those tests will skip" >&2
fi
if [ -x scripts/actionlint.sh ]; then
  scripts/actionlint.sh --install-only >/dev/null ||
    echo "note: actionlint unavailable; its tests will skip" >&2
fi

.venv/bin/pytest "$@"
