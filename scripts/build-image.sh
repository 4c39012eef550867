#!/usr/bin/env bash
# Build the mlferry image with the pinned model baked in (what `make image` runs).
#
# 1. Resolve MODEL_URI to one registry version and download it into MODEL_DIR
#    (`mlferry fetch`, which also writes MODEL_DIR/mlferry-pin.json).
# 2. Read name, version, alias and run id from that pin file.
# 3. Build images/mlferry/Dockerfile with BuildKit (context: the repository root),
#    handing the CA bundle to pip as a build secret when there is one, and tag the
#    image IMAGE:<name>-v<version>, e.g. mlferry:diabetes-v3.
# 4. Write IMAGE_ENV (IMAGE_REF=..., MODEL_NAME=..., ...) for the scripts that load,
#    deploy and test that exact image. The last line on stdout is the image ref.
#
# Knobs (environment):
#   IMAGE         image name (default mlferry)
#   MODEL_URI     model to bake: models:/NAME@ALIAS, /STAGE or /VERSION
#                 (default models:/diabetes@champion); the registry is MLFLOW_TRACKING_URI,
#                 or the embedded one when that is unset
#   FETCH         1 = download the model; 0 = use the folder already in MODEL_DIR
#                 (default 1)
#   MODEL_DIR     where the model is downloaded: build/model (default) or
#                 build/model-NAME, e.g. for a build that must not replace yours (it
#                 must be inside the build context, and .dockerignore lets in only these)
#   IMAGE_ENV     where the image facts are written (default build/image.env)
#   BASE_IMAGE    base image (default python:3.11-slim; when it is neither present nor
#                 pullable, scripts/base-image.sh makes and names a local Debian base)
#   CA_BUNDLE     CA bundle pip inside the build should trust, e.g. a TLS-intercepting
#                 proxy's; used only when the file exists; never stored in the image
#                 (default /etc/ssl/certs/ca-certificates.crt; empty = none)
#   VENV          project environment providing `mlferry` and python (default .venv)
#   PROGRESS      BuildKit progress output: auto, plain or tty (default auto)
#   BUILD_FLAGS   extra `docker build` flags, e.g. "--no-cache"
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-mlferry}
MODEL_URI=${MODEL_URI:-models:/diabetes@champion}
FETCH=${FETCH:-1}
MODEL_DIR=${MODEL_DIR:-build/model}
IMAGE_ENV=${IMAGE_ENV:-build/image.env}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
CA_BUNDLE=${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
VENV=${VENV:-.venv}
PROGRESS=${PROGRESS:-auto}
BUILD_FLAGS=${BUILD_FLAGS:-}

if (($# > 0)); then
  echo "usage: $0   (configured by environment variables; see the top of this file)" >&2
  exit 2
fi

cd "$ROOT"
DOCKER="$ROOT/scripts/docker.sh"
PY="$VENV/bin/python"
log() { echo "build-image: $*" >&2; }

# COPY takes MODEL_DIR relative to the context (the repository root).
MODEL_DIR=${MODEL_DIR%/}
MODEL_DIR=${MODEL_DIR#"$ROOT"/}
if [[ ! "$MODEL_DIR" =~ ^build/model(-[A-Za-z0-9_-]+)?$ ]]; then
  log "MODEL_DIR must be build/model or build/model-NAME in $ROOT, not '$MODEL_DIR'"
  exit 2
fi
PIN="$MODEL_DIR/mlferry-pin.json"

if [[ ! -x "$PY" ]]; then
  log "no project environment at $VENV; create it with: make venv"
  exit 1
fi
if ! "$DOCKER" info >/dev/null 2>&1; then
  log "no Docker engine answers; start one with: make docker-engine"
  exit 1
fi

# 1. The pinned model, fetched into a fresh folder and swapped in only when complete.
if [[ "$FETCH" == 1 ]]; then
  NEW_DIR="$MODEL_DIR.new"
  trap 'rm -rf "$NEW_DIR"' EXIT
  rm -rf "$NEW_DIR"
  mkdir -p "$(dirname "$MODEL_DIR")"
  log "fetching $MODEL_URI into $MODEL_DIR"
  "$VENV/bin/mlferry" fetch --model-uri "$MODEL_URI" --dest "$NEW_DIR" >&2
  rm -rf "$MODEL_DIR"
  mv "$NEW_DIR" "$MODEL_DIR"
fi
if [[ ! -f "$PIN" || ! -f "$MODEL_DIR/MLmodel" ]]; then
  log "$MODEL_DIR is not a pinned MLflow model folder (MLmodel + mlferry-pin.json);" \
    "run with FETCH=1"
  exit 1
fi

# 2. What is being baked. pin_field prints one field of the pin file ("" when null).
pin_field() {
  "$PY" -c 'import json, sys
value = json.load(open(sys.argv[1])).get(sys.argv[2])
print("" if value is None else value)' "$PIN" "$1"
}
MODEL_NAME=$(pin_field name)
MODEL_VERSION=$(pin_field version)
MODEL_ALIAS=$(pin_field alias)
MODEL_RUN_ID=$(pin_field run_id)
if [[ -z "$MODEL_NAME" || -z "$MODEL_VERSION" ]]; then
  log "$PIN lacks a name or version"
  exit 1
fi
MLFERRY_VERSION=$("$PY" -c 'import tomllib
print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')

GIT_COMMIT=unknown
SOURCE_DATE=
if git rev-parse --verify -q HEAD >/dev/null 2>&1; then
  GIT_COMMIT=$(git rev-parse HEAD)
  SOURCE_DATE=$(git log -1 --format=%cI)
  if [[ -n "$(git status --porcelain)" ]]; then
    GIT_COMMIT="$GIT_COMMIT-dirty"
  fi
fi

# A tag allows [A-Za-z0-9_.-]; registered model names may hold other characters.
TAG=$(printf '%s-v%s' "$MODEL_NAME" "$MODEL_VERSION" | tr -c 'A-Za-z0-9_.-' '-')
TAG=${TAG#[.-]}
IMAGE_REF="$IMAGE:${TAG:0:128}"

# 3. Build.
BASE_IMAGE=$("$ROOT/scripts/base-image.sh" "$BASE_IMAGE")
build_args=(
  --build-arg "BASE_IMAGE=$BASE_IMAGE"
  --build-arg "MLFERRY_VERSION=$MLFERRY_VERSION"
  --build-arg "GIT_COMMIT=$GIT_COMMIT"
  --build-arg "SOURCE_DATE=$SOURCE_DATE"
  --build-arg "MODEL_NAME=$MODEL_NAME"
  --build-arg "MODEL_ALIAS=$MODEL_ALIAS"
  --build-arg "MODEL_VERSION=$MODEL_VERSION"
  --build-arg "MODEL_RUN_ID=$MODEL_RUN_ID"
  --build-arg "MODEL_DIR=$MODEL_DIR"
)
# Proxy settings reach pip as Docker's predefined build args (kept out of the history).
for var in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  if [[ -n "${!var:-}" ]]; then
    build_args+=(--build-arg "$var")
  fi
done
if [[ -n "$CA_BUNDLE" && -f "$CA_BUNDLE" ]]; then
  build_args+=(--secret "id=pipcert,src=$CA_BUNDLE")
  log "pip in the build trusts $CA_BUNDLE (build secret, not stored in the image)"
fi

log "building $IMAGE_REF on $BASE_IMAGE (model $MODEL_NAME v$MODEL_VERSION," \
  "alias ${MODEL_ALIAS:-none}, run ${MODEL_RUN_ID:-unknown}; commit $GIT_COMMIT)"
# shellcheck disable=SC2086  # BUILD_FLAGS is a list of flags
DOCKER_BUILDKIT=1 "$DOCKER" build \
  --file images/mlferry/Dockerfile \
  --progress "$PROGRESS" \
  "${build_args[@]}" \
  --tag "$IMAGE_REF" \
  $BUILD_FLAGS \
  . >&2

# 4. Tell the other scripts which image this is.
env_line() { printf '%s=%q\n' "$1" "$2"; }
mkdir -p "$(dirname "$IMAGE_ENV")"
{
  env_line IMAGE_REF "$IMAGE_REF"
  env_line IMAGE_NAME "$IMAGE"
  env_line IMAGE_TAG "${IMAGE_REF#"$IMAGE":}"
  env_line MODEL_NAME "$MODEL_NAME"
  env_line MODEL_VERSION "$MODEL_VERSION"
  env_line MODEL_ALIAS "$MODEL_ALIAS"
  env_line MODEL_RUN_ID "$MODEL_RUN_ID"
  env_line GIT_COMMIT "$GIT_COMMIT"
  env_line BASE_IMAGE "$BASE_IMAGE"
} >"$IMAGE_ENV.tmp"
mv "$IMAGE_ENV.tmp" "$IMAGE_ENV"

SIZE=$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE_REF")
log "built $IMAGE_REF ($((SIZE / 1000000)) MB); details in $IMAGE_ENV"
echo "$IMAGE_REF"
