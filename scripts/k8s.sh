#!/usr/bin/env bash
# mlferry on Kubernetes: a local kind cluster, the image side-loaded into it, the
# manifests rendered from k8s/ and applied, and the batch job run on demand.
#
# Knobs (environment; the Makefile passes its own of the same names):
#   CLUSTER          kind cluster name (default: mlferry)
#   KIND_NODE_IMAGE  node image (default: the one pinned in k8s/kind/cluster.yaml)
#   KUBE_CONTEXT     kubectl context (default: kind-$CLUSTER); nothing else is touched
#   NAMESPACE        namespace for mlferry's objects (default: mlferry)
#   OVERLAY          kind (model baked into the image) or registry (fetched at start)
#   KIND_DATA        host folder holding batch in/ and out/ (default: .mlferry/kind/data)
#   IMAGE_ENV        facts about the built image, from `make image` (build/image.env)
#   BUILD_DIR        where rendered manifests go (default: build/k8s)
#   MODEL_URI        registry overlay: model to pin (default: models:/diabetes@champion)
#   PORT             local port for port-forward (default: 8080)
#   TIMEOUT          seconds to wait for a rollout or a batch Job (default: 300)
#   VENV             project environment (default: .venv)
#
# Usage: scripts/k8s.sh COMMAND
#   cluster       create the kind cluster (host data folder mounted, NodePorts mapped)
#   load          copy the image named in IMAGE_ENV into the cluster's node
#   render        write BUILD_DIR/OVERLAY/{kustomization.yaml,manifests.yaml}
#   deploy        render, write the demo input (kind), apply, wait for the rollout
#   port-forward  forward 127.0.0.1:PORT to the server's http port until Ctrl-C
#   smoke         check the deployed server and batch job (scripts/smoke.py)
#   batch-now     start a Job from the CronJob, wait for it, show where output went
#   undeploy      delete mlferry's objects from the namespace
#   cluster-down  delete the kind cluster
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CLUSTER=${CLUSTER:-mlferry}
CLUSTER_CONFIG=k8s/kind/cluster.yaml
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-$(sed -n 's/^ *image: *\(kindest\/node:.*\)$/\1/p' "$CLUSTER_CONFIG")}
KUBE_CONTEXT=${KUBE_CONTEXT:-kind-$CLUSTER}
NAMESPACE=${NAMESPACE:-mlferry}
OVERLAY=${OVERLAY:-kind}
KIND_DATA=${KIND_DATA:-.mlferry/kind/data}
IMAGE_ENV=${IMAGE_ENV:-build/image.env}
BUILD_DIR=${BUILD_DIR:-build/k8s}
MODEL_URI=${MODEL_URI:-models:/diabetes@champion}
PORT=${PORT:-8080}
TIMEOUT=${TIMEOUT:-300}
VENV=${VENV:-.venv}

# Where kind's extraMounts puts KIND_DATA inside the node (k8s/kind/cluster.yaml).
NODE_DATA=/mlferry-data

# Files removed on exit, however the script ends.
TMP_FILES=()
cleanup() {
  if ((${#TMP_FILES[@]})); then rm -f "${TMP_FILES[@]}"; fi
}
trap cleanup EXIT

usage() {
  sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

say() { echo "k8s.sh: $*"; }
die() {
  echo "k8s.sh: $*" >&2
  exit 1
}

# Check the tools a command needs, and say what is missing and where to get it.
need() {
  local missing=() tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    {
      echo "k8s.sh: missing tools: ${missing[*]}"
      for tool in "${missing[@]}"; do
        case $tool in
          kind) echo "  kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation (v0.32.0)" ;;
          kubectl) echo "  kubectl: https://kubernetes.io/docs/tasks/tools/ (v1.36 matches the node)" ;;
          docker) echo "  docker: a Docker engine (Docker Desktop, Debian's docker.io, ...)" ;;
        esac
      done
    } >&2
    exit 1
  fi
  if [[ " $* " == *" docker "* ]] && ! docker info >/dev/null 2>&1; then
    die "the Docker engine is not answering ('docker info' failed); start it first"
  fi
}

need_context() {
  kubectl config get-contexts "$KUBE_CONTEXT" >/dev/null 2>&1 ||
    die "no kubectl context '$KUBE_CONTEXT'; create the cluster with 'make cluster'"
}

need_venv() {
  [[ -x "$VENV/bin/mlferry" ]] || die "$VENV/bin/mlferry not found; run 'make venv'"
}

kc() { kubectl --context "$KUBE_CONTEXT" --namespace "$NAMESPACE" "$@"; }

# Print the path of directory $1 relative to directory $2 (both absolute).
relpath() {
  local target=$1 from=$2 up=""
  while [[ "$from" != / && "$target" != "$from" && "$target" != "$from"/* ]]; do
    from=$(dirname "$from")
    up="../$up"
  done
  local rest=${target#"$from"}
  rest=${rest#/}
  echo "${up}${rest:-.}"
}

# Read KEY=VALUE lines from the image facts file into IMG_* variables.
read_image_env() {
  [[ -f "$IMAGE_ENV" ]] || die "$IMAGE_ENV not found; build the image with 'make image'"
  local key value
  IMG_IMAGE_REF="" IMG_MODEL_NAME="" IMG_MODEL_VERSION="" IMG_MODEL_ALIAS=""
  while IFS='=' read -r key value; do
    [[ "$key" =~ ^[A-Z_]+$ ]] || continue
    # Values are written with printf %q: plain words, or quoted when empty.
    value=${value%\"} value=${value#\"} value=${value%\'} value=${value#\'}
    case $key in
      IMAGE_REF) IMG_IMAGE_REF=$value ;;
      MODEL_NAME) IMG_MODEL_NAME=$value ;;
      MODEL_VERSION) IMG_MODEL_VERSION=$value ;;
      MODEL_ALIAS) IMG_MODEL_ALIAS=$value ;;
    esac
  done <"$IMAGE_ENV"
  for key in IMAGE_REF MODEL_NAME MODEL_VERSION; do
    value=IMG_$key
    [[ -n "${!value}" ]] || die "$IMAGE_ENV has no $key; rebuild it with 'make image'"
  done
  [[ "$IMG_IMAGE_REF" == *:* ]] || die "IMAGE_REF '$IMG_IMAGE_REF' has no tag"
}

cmd_cluster() {
  need kind docker
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    say "cluster '$CLUSTER' already exists (context $KUBE_CONTEXT)"
    return
  fi

  # The mount source must exist before the node starts, or Docker creates it as root.
  mkdir -p "$KIND_DATA/in" "$KIND_DATA/out"
  local data config
  data=$(cd "$KIND_DATA" && pwd)
  config=build/kind/cluster.yaml
  mkdir -p "$(dirname "$config")"
  grep -q '^ *- hostPath: \.mlferry/kind/data$' "$CLUSTER_CONFIG" ||
    die "$CLUSTER_CONFIG no longer mounts .mlferry/kind/data; update scripts/k8s.sh"
  sed "s#hostPath: \.mlferry/kind/data\$#hostPath: $data#" "$CLUSTER_CONFIG" >"$config"

  say "creating cluster '$CLUSTER' from $KIND_NODE_IMAGE ($KIND_DATA mounted at $NODE_DATA)"
  kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --config "$config" \
    --wait "${TIMEOUT}s"
}

cmd_load() {
  need kind docker
  read_image_env
  docker image inspect "$IMG_IMAGE_REF" >/dev/null 2>&1 ||
    die "image $IMG_IMAGE_REF is not in the local Docker engine; run 'make image'"
  kind get clusters 2>/dev/null | grep -qx "$CLUSTER" ||
    die "no kind cluster '$CLUSTER'; run 'make cluster'"
  say "loading $IMG_IMAGE_REF into cluster '$CLUSTER'"
  kind load docker-image "$IMG_IMAGE_REF" --name "$CLUSTER"
}

# Pin the registry overlay's model: a models:/NAME/VERSION URI is already pinned;
# anything else is resolved once, here, so every pod loads the same version.
pin_registry_model() {
  if [[ "$MODEL_URI" =~ ^models:/([^/@]+)/([0-9]+)$ ]]; then
    PIN_NAME=${BASH_REMATCH[1]} PIN_VERSION=${BASH_REMATCH[2]}
    return
  fi
  need_venv
  say "resolving $MODEL_URI in ${MLFLOW_TRACKING_URI:-the embedded registry}"
  local pinned
  pinned=$("$VENV/bin/mlferry" resolve --model-uri "$MODEL_URI") ||
    die "could not pin $MODEL_URI; the reason is above"
  read -r PIN_NAME PIN_VERSION < <("$VENV/bin/python" -c \
    'import json,sys; p=json.load(sys.stdin); print(p["name"], p["version"])' <<<"$pinned")
}

# Print a kustomize patch entry that sets the model annotations on a pod template.
annotation_patch() {
  local api=$1 kind=$2 object=$3 name=$4 version=$5 uri=$6 pad="          "
  echo "  - target: {kind: $kind, name: $object}"
  echo "    patch: |-"
  echo "      apiVersion: $api"
  echo "      kind: $kind"
  echo "      metadata:"
  echo "        name: $object"
  echo "      spec:"
  if [[ $kind == CronJob ]]; then
    echo "        jobTemplate:"
    echo "          spec:"
    pad="              "
  fi
  echo "${pad:2}template:"
  echo "${pad}metadata:"
  echo "${pad}  annotations:"
  echo "${pad}    io.mlferry/model-name: \"$name\""
  echo "${pad}    io.mlferry/model-version: \"$version\""
  echo "${pad}    io.mlferry/model-uri: \"$uri\""
  if [[ -n "${IMG_MODEL_ALIAS:-}" && "$OVERLAY" != registry ]]; then
    echo "${pad}    io.mlferry/model-alias: \"$IMG_MODEL_ALIAS\""
  fi
}

cmd_render() {
  need kubectl
  [[ -d "k8s/overlays/$OVERLAY" ]] || die "unknown OVERLAY '$OVERLAY' (kind or registry)"
  read_image_env

  local name=$IMG_MODEL_NAME version=$IMG_MODEL_VERSION
  if [[ "$OVERLAY" == registry ]]; then
    pin_registry_model
    name=$PIN_NAME version=$PIN_VERSION
  fi
  local out=$BUILD_DIR/$OVERLAY pinned_uri="models:/$name/$version" base
  mkdir -p "$out"
  # kustomize takes only relative paths to other kustomizations.
  base=$(relpath "$ROOT/k8s/overlays/$OVERLAY" "$(cd "$out" && pwd)")

  {
    echo "# Written by scripts/k8s.sh render from $IMAGE_ENV; do not edit."
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "namespace: $NAMESPACE"
    echo "resources:"
    echo "  - $base"
    echo "images:"
    echo "  - name: mlferry"
    echo "    newName: ${IMG_IMAGE_REF%:*}"
    echo "    newTag: \"${IMG_IMAGE_REF##*:}\""
    echo "labels:"
    echo "  - pairs:"
    echo "      app.kubernetes.io/version: \"$name-v$version\""
    echo "    includeTemplates: true"
    if [[ "$OVERLAY" == registry ]]; then
      echo "configMapGenerator:"
      echo "  - name: mlferry-model"
      echo "    behavior: merge"
      echo "    literals:"
      echo "      - MLFERRY_MODEL_URI=$pinned_uri"
    fi
    echo "patches:"
    annotation_patch apps/v1 Deployment mlferry-server "$name" "$version" "$pinned_uri"
    annotation_patch batch/v1 CronJob mlferry-batch "$name" "$version" "$pinned_uri"
  } >"$out/kustomization.yaml"

  # Never leave a half-written manifests.yaml for deploy to apply.
  TMP_FILES+=("$out/manifests.yaml.tmp")
  kubectl kustomize "$out" >"$out/manifests.yaml.tmp"
  mv "$out/manifests.yaml.tmp" "$out/manifests.yaml"
  say "rendered $out/manifests.yaml (image $IMG_IMAGE_REF, model $name version $version)"
}

cmd_deploy() {
  need kubectl
  need_context
  cmd_render
  local manifests=$BUILD_DIR/$OVERLAY/manifests.yaml

  if [[ "$OVERLAY" == kind ]]; then
    need_venv
    # The batch pod runs as uid 10001, not as you: let it write into out/.
    mkdir -p "$KIND_DATA/in" "$KIND_DATA/out"
    chmod 0777 "$KIND_DATA/out"
    "$VENV/bin/mlferry" demo-data --dest "$KIND_DATA/in"
    say "demo input in $KIND_DATA/in (the node sees it at $NODE_DATA/in)"
  fi

  # Pods here must meet the restricted Pod Security Standard, except kind's hostPath
  # volumes (a local demo), for which it only warns.
  local enforce=restricted
  [[ "$OVERLAY" == kind ]] && enforce=privileged
  kubectl --context "$KUBE_CONTEXT" create namespace "$NAMESPACE" --dry-run=client -o yaml |
    kubectl --context "$KUBE_CONTEXT" apply -f - >/dev/null
  kubectl --context "$KUBE_CONTEXT" label --overwrite namespace "$NAMESPACE" \
    "pod-security.kubernetes.io/enforce=$enforce" \
    pod-security.kubernetes.io/warn=restricted >/dev/null

  if [[ "$OVERLAY" == registry ]] && ! kc get secret mlferry-registry >/dev/null 2>&1; then
    say "warning: no Secret mlferry-registry in $NAMESPACE; pods will use no registry"
    say "  address or credentials (see k8s/README.md to create it)"
  fi

  kc apply -f "$manifests"
  say "waiting up to ${TIMEOUT}s for the server rollout"
  kc rollout status deployment/mlferry-server --timeout="${TIMEOUT}s"
  say "deployed to $KUBE_CONTEXT/$NAMESPACE; next: make smoke, make port-forward"
  if [[ "$OVERLAY" == kind ]]; then
    say "the server also answers on http://127.0.0.1:30080 (NodePort)"
  fi
}

cmd_port_forward() {
  need kubectl
  need_context
  say "http://127.0.0.1:$PORT -> service/mlferry-server (Ctrl-C stops), e.g."
  say "  curl http://127.0.0.1:$PORT/v2/models/diabetes/ready"
  kc port-forward --address 127.0.0.1 service/mlferry-server "$PORT:http"
}

cmd_smoke() {
  need kubectl
  need_context
  [[ -x "$VENV/bin/python" ]] || die "$VENV/bin/python not found; run 'make venv'"
  local args=(--context "$KUBE_CONTEXT" --namespace "$NAMESPACE" --timeout "$TIMEOUT")
  # kind: the version baked into the image, and batch output on the host. Otherwise
  # the version deploy pinned (pod annotation), and the Job's status only.
  if [[ "$OVERLAY" == kind ]]; then
    args+=(--image-env "$IMAGE_ENV" --data-dir "$KIND_DATA")
  fi
  exec "$VENV/bin/python" scripts/smoke.py "${args[@]}"
}

# Open up what the batch pod (uid 10001) wrote, so you can read and delete it on the
# host; runs as root inside the node container. Best effort: a no-op on Docker Desktop.
open_output() {
  [[ "$OVERLAY" == kind ]] || return 0
  command -v docker >/dev/null 2>&1 || return 0
  docker exec "$CLUSTER-control-plane" chmod -R a+rwX "$NODE_DATA/out" 2>/dev/null || true
}

cmd_batch_now() {
  need kubectl
  need_context
  local job stamp
  job=mlferry-batch-manual-$(date -u +%Y%m%d%H%M%S)
  # Output newer than this file is this run's.
  stamp=$(mktemp)
  TMP_FILES+=("$stamp")
  kc create job "$job" --from=cronjob/mlferry-batch
  say "started job $job; waiting up to ${TIMEOUT}s"

  local deadline=$((SECONDS + TIMEOUT)) state=""
  while ((SECONDS < deadline)); do
    state=$(kc get job "$job" \
      -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}')
    [[ " $state " == *" Complete "* || " $state " == *" Failed "* ]] && break
    sleep 5
  done
  kc logs "job/$job" --all-containers --tail=40 || true

  if [[ " $state " == *" Complete "* ]]; then
    open_output
    say "job $job completed"
    if [[ "$OVERLAY" == kind ]]; then
      say "output on the host under $KIND_DATA/out:"
      find "$KIND_DATA/out" -name _SUCCESS -newer "$stamp" -exec dirname {} \; |
        sed 's/^/  /' | sort -u
    fi
    return 0
  fi
  if [[ " $state " == *" Failed "* ]]; then
    die "job $job failed; see 'kubectl --context $KUBE_CONTEXT -n $NAMESPACE describe job $job'"
  fi
  die "job $job did not finish within ${TIMEOUT}s"
}

cmd_undeploy() {
  need kubectl
  need_context
  # By label, so objects from an older render and manual Jobs go too. The Secret
  # mlferry-registry is yours and stays.
  kc delete cronjob,job,deployment,service,poddisruptionbudget,networkpolicy,configmap,serviceaccount \
    -l app.kubernetes.io/part-of=mlferry --ignore-not-found --wait=true
  open_output
}

cmd_cluster_down() {
  need kind docker
  if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    say "no kind cluster '$CLUSTER'"
    return
  fi
  OVERLAY=kind open_output
  kind delete cluster --name "$CLUSTER"
}

[[ $# -eq 1 ]] || usage
case $1 in
  cluster) cmd_cluster ;;
  load) cmd_load ;;
  render) cmd_render ;;
  deploy) cmd_deploy ;;
  port-forward) cmd_port_forward ;;
  smoke) cmd_smoke ;;
  batch-now) cmd_batch_now ;;
  undeploy) cmd_undeploy ;;
  cluster-down) cmd_cluster_down ;;
  -h | --help) usage ;;
  *)
    echo "k8s.sh: unknown command '$1'" >&2
    usage
    ;;
esac
