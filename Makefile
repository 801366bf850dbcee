# One command set for developers and CI (.ci/run calls `make test`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed-stamp
NODE_STAMP := emulator/node_modules/.installed-stamp

.PHONY: help deps up token test test-unit lint format bench clean

help:
	@echo "make up     run the local stack (emulators, gateway) and print where it is"
	@echo "make token USER=id   print an ID token for USER from the running stack's Auth emulator"
	@echo "make test   lint, type-check and run every test (unit, integration, end-to-end)"
	@echo "make bench  run the benchmarks and print the figures"
	@echo "make lint   ruff + mypy only;  make format  apply ruff's formatting"

$(VENV_STAMP): pyproject.toml functions/requirements.txt
	@scripts/bootstrap.sh
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -U pip
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]' -r functions/requirements.txt
	@touch $@

$(NODE_STAMP): emulator/package.json emulator/package-lock.json
	cd emulator && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

deps: $(VENV_STAMP) $(NODE_STAMP)

up: deps
	$(PY) -m emulator up

token: $(VENV_STAMP)
	@# USER is also the login name in the environment: only a USER given to make counts.
	@if [ "$(origin USER)" != "command line" ]; then echo "usage: make token USER=user123" >&2; exit 2; fi
	@$(PY) -m emulator token "$(USER)"

lint: $(VENV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(VENV_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: deps lint
	$(PY) -m pytest

test-unit: $(VENV_STAMP)
	$(PY) -m pytest tests/unit

bench: deps
	$(PY) -m tests.bench

clean:
	rm -rf $(VENV) emulator/node_modules .run .mypy_cache .ruff_cache .pytest_cache
