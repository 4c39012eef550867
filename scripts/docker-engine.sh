#!/usr/bin/env bash
# Make sure a Docker engine answers, starting one in the background when none does.
#
# An engine that already answers is left alone. Otherwise Debian's `dockerd` (package
# docker.io; installed with apt-get when missing and running as root) is started in
# the background, needing no systemd, with its log and PID file under STATE_DIR. `stop`
# stops only the engine this script started, found by the PID it recorded.
#
# On success the last line on stdout names the client to use for builds, so
#   eval "$(scripts/docker-engine.sh)"
# sets DOCKER and DOCKER_BUILDKIT. scripts/docker.sh picks the same client.
#
# Knobs (environment):
#   STATE_DIR       log + PID file of the engine started here (default /tmp/mlferry-docker;
#                   kept outside the repository so `make clean` cannot orphan the engine)
#   ENGINE_TIMEOUT  seconds to wait for the engine to answer, or to stop (default 60)
#   DOCKERD_FLAGS   extra flags for dockerd, e.g. "--data-root /srv/docker"
#   INSTALL         1 = apt-get install docker.io when dockerd is missing and we are root
#                   (default 1)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${STATE_DIR:-${TMPDIR:-/tmp}/mlferry-docker}
ENGINE_TIMEOUT=${ENGINE_TIMEOUT:-60}
DOCKERD_FLAGS=${DOCKERD_FLAGS:-}
INSTALL=${INSTALL:-1}

PID_FILE="$STATE_DIR/dockerd.pid"
LOG_FILE="$STATE_DIR/dockerd.log"

usage() {
  cat >&2 <<EOF
usage: $0 [start|stop|status]
  start   (default) start an engine unless one already answers; print the client to use
  stop    stop the engine this script started (PID in $PID_FILE)
  status  say whether an engine answers and whether this script started it
EOF
  exit 2
}

log() { echo "docker-engine: $*" >&2; }

client() { "$ROOT/scripts/docker.sh" --which; }

engine_answers() { "$ROOT/scripts/docker.sh" info >/dev/null 2>&1; }

# PID of the dockerd this script started, if it is still running; empty otherwise.
our_pid() {
  local pid
  [[ -s "$PID_FILE" ]] || return 0
  pid=$(<"$PID_FILE")
  if [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/comm" && "$(<"/proc/$pid/comm")" == dockerd ]]
  then
    echo "$pid"
  fi
}

print_client() {
  log "client: $(client) (scripts/docker.sh runs it with DOCKER_BUILDKIT=1)"
  echo "export DOCKER=$(client) DOCKER_BUILDKIT=1"
}

ensure_dockerd() {
  command -v dockerd >/dev/null 2>&1 && return 0
  if [[ "$INSTALL" == 1 && $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "dockerd not found; installing Debian's docker.io"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >&2
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    log "dockerd not found; install Debian's docker.io (apt-get install docker.io)"
    exit 1
  fi
}

start() {
  if engine_answers; then
    log "an engine already answers; leaving it as it is"
    print_client
    return 0
  fi
  ensure_dockerd
  # The package's own start-up may already have started an engine.
  if engine_answers; then
    log "an engine answers now (started by the docker.io package)"
    print_client
    return 0
  fi
  if [[ $(id -u) != 0 ]]; then
    log "no engine answers and dockerd needs root; run this as root (or sudo)"
    exit 1
  fi
  if [[ -n "$(our_pid)" ]]; then
    log "dockerd $(our_pid) (started here) is running but does not answer;" \
      "see $LOG_FILE, or run: $0 stop"
    exit 1
  fi

  mkdir -p "$STATE_DIR"
  rm -f "$PID_FILE"
  log "starting dockerd (log: $LOG_FILE)"
  # A new session keeps the engine alive after this script and its caller exit.
  # shellcheck disable=SC2086  # DOCKERD_FLAGS is a list of flags
  setsid dockerd --pidfile "$PID_FILE" $DOCKERD_FLAGS </dev/null >"$LOG_FILE" 2>&1 &
  local launched=$!

  local deadline=$((SECONDS + ENGINE_TIMEOUT))
  until engine_answers; do
    if ! kill -0 "$launched" 2>/dev/null && [[ -z "$(our_pid)" ]]; then
      log "dockerd exited during start-up; last lines of $LOG_FILE:"
      tail -n 20 "$LOG_FILE" >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "dockerd did not answer within ${ENGINE_TIMEOUT}s; see $LOG_FILE" \
        "(it is still running: $0 stop)"
      exit 1
    fi
    sleep 1
  done
  log "engine ready: dockerd PID $(our_pid), $(server_version)"
  print_client
}

server_version() {
  "$ROOT/scripts/docker.sh" version --format 'server {{.Server.Version}}' 2>/dev/null ||
    echo "server version unknown"
}

stop() {
  local pid
  pid=$(our_pid)
  if [[ -z "$pid" ]]; then
    log "no dockerd started by this script is running (nothing in $PID_FILE)"
    return 0
  fi
  log "stopping dockerd $pid"
  kill -TERM "$pid"
  local deadline=$((SECONDS + ENGINE_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "dockerd $pid still running after ${ENGINE_TIMEOUT}s; see $LOG_FILE"
      exit 1
    fi
    sleep 1
  done
  rm -f "$PID_FILE"
  log "stopped"
}

status() {
  local pid
  pid=$(our_pid)
  if engine_answers; then
    if [[ -n "$pid" ]]; then
      log "engine answers: dockerd PID $pid, started by this script (log: $LOG_FILE)"
    else
      log "engine answers; it was not started by this script"
    fi
    print_client
  else
    log "no engine answers${pid:+ (dockerd $pid started here is running; see $LOG_FILE)}"
    exit 1
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
