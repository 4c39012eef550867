#!/usr/bin/env bash
# Run the docker client that can build this project's image, with BuildKit on.
#
# Debian's docker.io brings a 20.10 client that builds with DOCKER_BUILDKIT=1 on its
# own; a newer client without the buildx plugin refuses BuildKit builds. So prefer
# /usr/bin/docker when it is there, else whatever `docker` is on PATH.
#
# Knobs (environment):
#   DOCKER           the client to run (default: /usr/bin/docker if present, else docker)
#   DOCKER_BUILDKIT  default 1
#
# Usage: scripts/docker.sh ARGS...        run the client, e.g. scripts/docker.sh images
#        scripts/docker.sh --which        print the client path and exit
set -euo pipefail

if [[ -z "${DOCKER:-}" ]]; then
  if [[ -x /usr/bin/docker ]]; then
    DOCKER=/usr/bin/docker
  else
    DOCKER=$(command -v docker || true)
  fi
fi
if [[ -z "$DOCKER" ]]; then
  echo "docker.sh: no docker client found; install Debian's docker.io" >&2
  exit 127
fi

if [[ "${1:-}" == "--which" ]]; then
  echo "$DOCKER"
  exit 0
fi

export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-1}"
exec "$DOCKER" "$@"
