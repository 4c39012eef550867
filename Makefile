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
.PHONY: help venv lock lint format registry registry-stop model demo test bench clean

# Show this help.
help:
	@awk '/^# / {doc=substr($$0, 3); next} /^[a-z][a-z-]*:/ {split($$1, t, ":"); if (doc) printf "  %-14s %s\n", t[1], doc; doc=""; next} {doc=""}' $(MAKEFILE_LIST)

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
	$(BIN)/ruff check mlferry tests scripts
	$(BIN)/ruff format --check mlferry tests scripts

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

# Remove generated state: registry, outputs, build context (keeps the environment).
clean:
	rm -rf .mlferry output build

##@ Kubernetes (kind) and the image
