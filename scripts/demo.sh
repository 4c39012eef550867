#!/usr/bin/env bash
# The main job end to end on the embedded default: start the local registry, train and
# register the demo model, score the historical table and a what-if grid, serve the
# model with MLServer and ask it the same what-if questions over HTTP, print the
# results and where they are, then stop what this script started.
# Knobs (env): MLFERRY_HOME (state, default .mlferry), MLFERRY_OUTPUT_DIR (default output).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mlferry=".venv/bin/mlferry"
[ -x "$mlferry" ] || { echo "error: run 'make venv' first" >&2; exit 1; }

if [ -n "${MLFLOW_TRACKING_URI:-}" ]; then
  echo "note: MLFLOW_TRACKING_URI is set; the demo uses the embedded registry instead" >&2
  unset MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
fi

started_registry=0
cleanup() {
  if [ "$started_registry" = 1 ]; then
    "$mlferry" registry stop >/dev/null || true
    echo "stopped the embedded registry this demo started"
  fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "1/5 embedded registry"
if "$mlferry" registry status >/dev/null 2>&1; then
  "$mlferry" registry status
else
  "$mlferry" --log-level WARNING registry start
  started_registry=1
fi

step "2/5 train the demo model, register it, point diabetes@champion at it"
# MLflow prints links to its UI on stdout; the registry's UI is at the URL above.
"$mlferry" --log-level WARNING train-demo | sed '/^🏃/d; /^🧪/d'
"$mlferry" --log-level WARNING demo-data >/dev/null

step "3/5 batch: score the historical table (jobs/diabetes-history.yaml)"
"$mlferry" --log-level WARNING score --job jobs/diabetes-history.yaml

step "4/5 what-if: BMI × blood pressure around a median patient (jobs/diabetes-whatif.yaml)"
"$mlferry" --log-level WARNING score --job jobs/diabetes-whatif.yaml

step "5/5 model as a service: MLServer + the MLflow runtime, called with requests"
"$mlferry" --log-level WARNING demo-serve --job jobs/diabetes-whatif.yaml

outputs="${MLFERRY_OUTPUT_DIR:-output}"
printf '\nOutputs (predictions, manifest.json, _SUCCESS, whatif.png) are under %s/:\n' "$outputs"
find "$outputs" -path '*/run=*' -type f | sort
