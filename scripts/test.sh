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
  state="$(scripts/docker-engine.sh status 2>/dev/null || true)"
  if scripts/docker-engine.sh start; then
    [ "$state" = running ] || engine_started=1
  else
    echo "note: no Docker engine; container tests will be skipped" >&2
  fi
fi
if [ -x scripts/tools-venv.sh ]; then
  scripts/tools-venv.sh || echo "note: policy tools (checkov) unavailable; those tests will skip" >&2
fi

.venv/bin/pytest "$@"
