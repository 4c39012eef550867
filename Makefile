# mlferry: ferry a registered MLflow model into batch jobs and a model service.
# `make help` lists the targets. Knobs below can be set on the command line
# (make demo PYTHON=python3.11) or in the environment.

# Python used to create the project environment (3.11 or 3.12; MLServer needs < 3.13).
PYTHON ?= python3
# The project environment, created from the full lock.
VENV ?= .venv
# Model to ferry; any models:/NAME@ALIAS, models:/NAME/STAGE or models:/NAME/VERSION.
MODEL_URI ?= models:/diabetes@champion
# Extra arguments for pytest, e.g. make test PYTEST_ARGS="-k scoring -x".
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv lock lint format registry registry-stop model demo test bench bench-serve notebook clean

# Show this help.
help:
	@awk '/^# / {doc=substr($$0, 3); next} /^[a-z][a-z-]*:/ {split($$1, t, ":"); if (doc) printf "  %-20s %s\n", t[1], doc; doc=""; next} {doc=""}' $(MAKEFILE_LIST)

# Create the environment from the lock (re-run when the lock changes).
venv: $(STAMP)
$(STAMP): requirements/dev.lock pyproject.toml
	scripts/venv.sh $(VENV) $(PYTHON)
	@touch $@

# Re-resolve requirements/*.lock from the pins in pyproject.toml.
lock: $(STAMP)
	scripts/lock.sh $(VENV)

# Check style with ruff.
lint: $(STAMP)
	$(BIN)/ruff check mlferry tests scripts notebooks
	$(BIN)/ruff format --check mlferry tests scripts notebooks

# Format the code with ruff.
format: $(STAMP)
	$(BIN)/ruff format mlferry tests scripts
	$(BIN)/ruff check --fix mlferry tests scripts

# Start the embedded MLflow registry on 127.0.0.1 (state kept in .mlferry/registry).
registry: $(STAMP)
	$(BIN)/mlferry registry start

# Stop the embedded registry that `make registry` started.
registry-stop: $(STAMP)
	$(BIN)/mlferry registry stop

# Train the demo model, register a new version and point the alias `champion` at it.
model: registry
	$(BIN)/mlferry train-demo

# Run the main job end to end on the embedded registry, then stop what it started.
demo: $(STAMP)
	scripts/demo.sh

# Set up and run every test.
test: $(STAMP)
	scripts/test.sh $(PYTEST_ARGS)

# Measure batch throughput and memory against in-process predict.
bench: $(STAMP)
	$(BIN)/python scripts/bench_batch.py

# Measure the model service against mlflow models serve and in-process predict (needs wrk).
bench-serve: $(STAMP)
	@command -v wrk >/dev/null || { echo "bench-serve needs wrk (apt-get install wrk)"; exit 1; }
	$(BIN)/python scripts/bench_serve.py

# Open the notebooks in JupyterLab (start the registry first: make registry model).
notebook: $(STAMP)
	$(BIN)/jupyter lab notebooks

# Remove generated state: registry, outputs, build context (keeps the environment).
clean:
	rm -rf .mlferry output build

##@ Kubernetes (kind) and the image

# Image name; `make image` tags it <model>-v<version>, e.g. mlferry:diabetes-v3.
IMAGE ?= mlferry
# Base image; when it can be neither found nor pulled, a local Debian one is made.
BASE_IMAGE ?= python:3.11-slim

.PHONY: docker-engine docker-engine-stop image

# Start a Docker engine in the background unless one already answers.
docker-engine:
	scripts/docker-engine.sh start

# Stop the Docker engine that `make docker-engine` started.
docker-engine-stop:
	scripts/docker-engine.sh stop

# Build the image with the pinned MODEL_URI baked in (tag written to build/image.env).
image: $(STAMP)
	IMAGE='$(IMAGE)' MODEL_URI='$(MODEL_URI)' BASE_IMAGE='$(BASE_IMAGE)' VENV='$(VENV)' \
		scripts/build-image.sh

# kind cluster name; kubectl talks to the context kind-$(CLUSTER) and no other.
CLUSTER ?= mlferry
# kind node image, pinned by digest (the same as k8s/kind/cluster.yaml; kind v0.32.0).
KIND_NODE_IMAGE ?= kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5
# Namespace for mlferry's objects.
NAMESPACE ?= mlferry
# Overlay to deploy: kind (model baked into the image) or registry (fetched at pod start).
OVERLAY ?= kind
# Host folder mounted into the kind node for batch input (in/) and output (out/).
KIND_DATA ?= .mlferry/kind/data
# Local port for `make port-forward`.
PORT_FORWARD_PORT ?= 8080
# Seconds to wait for a rollout or a batch Job.
K8S_TIMEOUT ?= 300

K8S := CLUSTER='$(CLUSTER)' KIND_NODE_IMAGE='$(KIND_NODE_IMAGE)' NAMESPACE='$(NAMESPACE)' \
	OVERLAY='$(OVERLAY)' KIND_DATA='$(KIND_DATA)' MODEL_URI='$(MODEL_URI)' \
	PORT='$(PORT_FORWARD_PORT)' TIMEOUT='$(K8S_TIMEOUT)' VENV='$(VENV)' scripts/k8s.sh

.PHONY: cluster load deploy port-forward smoke batch-now undeploy cluster-down tools

# Create the kind cluster: host data folder mounted, NodePorts mapped to 127.0.0.1.
cluster:
	$(K8S) cluster

# Copy the image named in build/image.env into the kind node.
load:
	$(K8S) load

# Render k8s/overlays/OVERLAY for the built image, apply it, wait for the rollout.
deploy: $(STAMP)
	$(K8S) deploy

# Forward 127.0.0.1:PORT_FORWARD_PORT to the model server until Ctrl-C.
port-forward:
	$(K8S) port-forward

# Check the deployment: rollout, V2 inference, model version, a batch run's output.
smoke: $(STAMP)
	$(K8S) smoke

# Run the batch job now (a Job from the CronJob) and show where its output went.
batch-now:
	$(K8S) batch-now

# Delete mlferry's objects from the cluster (the registry Secret stays).
undeploy:
	$(K8S) undeploy

# Delete the kind cluster.
cluster-down:
	$(K8S) cluster-down

# Create .venv-tools/ (checkov) from requirements/tools.lock.
tools:
	scripts/tools-venv.sh
