#!/usr/bin/env bash
# Print the base image to build on, making a local Debian one when none can be pulled.
#
# The image's Dockerfile takes its base as a build ARG and only needs `python3 -m venv`,
# so the official python:3.11-slim and a plain Debian bookworm with python3 both work.
# Order: BASE_IMAGE already present -> use it; pullable -> pull it; LOCAL_BASE present
# -> use it; else debootstrap a minimal bookworm (python3, python3-venv, CA
# certificates; about 3 minutes) and `docker import` it as LOCAL_BASE.
# Progress goes to stderr; the image name is the only line on stdout:
#   BASE_IMAGE=$(scripts/base-image.sh)
#
# Knobs (environment, or the image as the first argument):
#   BASE_IMAGE    preferred base (default python:3.11-slim)
#   LOCAL_BASE    tag of the locally made base (default mlferry-base:bookworm)
#   PULL          1 = try `docker pull BASE_IMAGE` when it is missing (default 1)
#   PULL_TIMEOUT  seconds allowed for that pull (default 120)
#   SUITE         Debian suite for the local base (default bookworm)
#   MIRROR        Debian mirror for debootstrap (default http://deb.debian.org/debian)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_IMAGE=${1:-${BASE_IMAGE:-python:3.11-slim}}
LOCAL_BASE=${LOCAL_BASE:-mlferry-base:bookworm}
PULL=${PULL:-1}
PULL_TIMEOUT=${PULL_TIMEOUT:-120}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if (($# > 1)) || [[ "${1:-}" == -* ]]; then
  echo "usage: $0 [BASE_IMAGE]" >&2
  exit 2
fi

DOCKER="$ROOT/scripts/docker.sh"
log() { echo "base-image: $*" >&2; }
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

if ! "$DOCKER" info >/dev/null 2>&1; then
  log "no Docker engine answers; start one with: make docker-engine"
  exit 1
fi

# 1. The preferred base, local or pulled.
if have_image "$BASE_IMAGE"; then
  echo "$BASE_IMAGE"
  exit 0
fi
if [[ "$PULL" == 1 ]]; then
  log "pulling $BASE_IMAGE (up to ${PULL_TIMEOUT}s)"
  if timeout "$PULL_TIMEOUT" "$DOCKER" pull --quiet "$BASE_IMAGE" >&2; then
    echo "$BASE_IMAGE"
    exit 0
  fi
  log "cannot pull $BASE_IMAGE; falling back to a local Debian $SUITE base"
fi

# 2. The local base, made once.
if have_image "$LOCAL_BASE"; then
  log "using $LOCAL_BASE (remove it to rebuild: docker rmi $LOCAL_BASE)"
  echo "$LOCAL_BASE"
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  log "making $LOCAL_BASE needs root (debootstrap); run this as root"
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mlferry-base.XXXXXX")
cleanup() {
  # An interrupted debootstrap can leave proc/sys/dev mounted inside the tree: unmount
  # them first, and never let rm cross into another file system.
  local mnt
  while read -r mnt; do
    umount -l "$mnt" 2>/dev/null || true
  done < <(awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r)
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

ROOTFS="$WORK/rootfs"
log "debootstrap $SUITE into $ROOTFS (takes a few minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  log "debootstrap failed; last lines of its log:"
  tail -n 30 "$WORK/debootstrap.log" >&2
  exit 1
}

# Slim the tree: package caches and lists, documentation (copyright files stay), and
# the build host's network identity, which Docker provides at run time anyway.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
  "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
  "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/*
find "$ROOTFS/usr/share/doc" -type f ! -name copyright -delete
find "$ROOTFS/usr/share/doc" -type d -empty -delete
: >"$ROOTFS/etc/resolv.conf"
echo localhost >"$ROOTFS/etc/hostname"

log "importing as $LOCAL_BASE"
tar --numeric-owner -C "$ROOTFS" -c . |
  "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase $SUITE (python3, python3-venv)" \
    - "$LOCAL_BASE" >&2
echo "$LOCAL_BASE"
