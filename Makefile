# One command set for developers and CI (.ci/run calls `make test`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed-stamp
NODE_STAMP := emulator/node_modules/.installed-stamp
CLIENT_STAMP := clients/js/node_modules/.installed-stamp
DEMO_BUILD := clients/js/dist/demo/index.html
CONSOLE_BUILD := clients/js/dist/console/index.html

# The Docker engine scripts/containers.sh starts: its own socket and data root (a cache of the
# local base images and layers between runs on one machine).
export DOCKER_HOST ?= unix:///run/presence-docker.sock

.PHONY: help deps demo up up-containers images engine-stop token test test-unit test-containers lint format \
	bench clean functions-discover capacity lock deploy soak

help:
	@echo "make up     run the local stack (emulators, gateway) and print where it is"
	@echo "make token USER=id   print an ID token for USER from the running stack's Auth emulator"
	@echo "make test   lint, type-check and run every test (unit, integration, end-to-end)"
	@echo "make images           start a Docker engine and build the images (no registry needed)"
	@echo "make up-containers    the same stack as make up, in containers (docker-compose)"
	@echo "make test-containers  integration + end-to-end tests with the emulators in containers,"
	@echo "                      plus the compose scenario; stops the engine afterwards"
	@echo "make bench  run the benchmarks, print the figures and draw docs/benchmarks/*.svg"
	@echo "make soak [SOAK_SECONDS=600] [SOAK_SEED=n]  random faults under a population of"
	@echo "                         clients, invariants checked (docs/soak.md)"
	@echo "make capacity [USERS=n]  needs and costs at n connected users (default: 10k to 10M),"
	@echo "                         the tables of docs/capacity.md"
	@echo "make functions-discover  build functions/venv and run the Firebase CLI's discovery of"
	@echo "                         the deployed functions, offline (what firebase deploy runs)"
	@echo "make lint   ruff + mypy only;  make format  apply ruff's formatting"
	@echo "make deploy PROJECT=id REGION=r [DRY_RUN=1]  deploy to Google Cloud (docs/deployment.md);"
	@echo "                         DRY_RUN=1 prints the commands instead of running them"
	@echo "make lock   regenerate the hashed Python locks (requirements/, functions/requirements.txt)"

# Every Python package comes from a hashed lock (make lock): requirements/dev.txt here (the
# gateway's, the dev extra's and the sweep function's requirements), requirements/gateway.txt in
# the gateway image, functions/requirements.txt in the function's image and on Cloud Functions.
# The project itself goes in last, offline: no dependencies, no build isolation (setuptools
# comes from the lock too).
$(VENV_STAMP): pyproject.toml clients/python/pyproject.toml requirements/dev.txt
	@scripts/bootstrap.sh
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements/dev.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
		-e clients/python
	@touch $@

$(NODE_STAMP): emulator/package.json emulator/package-lock.json
	cd emulator && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(CLIENT_STAMP): clients/js/package.json clients/js/package-lock.json
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The demo page (Firebase JS SDK + the client, bundled by esbuild) that `make up` serves at /demo.
$(DEMO_BUILD): $(CLIENT_STAMP) clients/js/presence-client.js clients/js/presence-client.d.ts \
		clients/js/build/pages.mjs $(wildcard clients/js/demo/*)
	node clients/js/demo/build.mjs

demo: $(DEMO_BUILD)

# The operator console (Firebase Auth + uPlot, bundled by esbuild) served at /console when
# CONSOLE_ENABLED is on. Each page's build replaces only its own folder of dist/.
$(CONSOLE_BUILD): $(CLIENT_STAMP) clients/js/build/pages.mjs $(wildcard clients/js/console/*)
	node clients/js/console/build.mjs

deps: $(VENV_STAMP) $(NODE_STAMP) $(DEMO_BUILD) $(CONSOLE_BUILD)

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

# Two pytest workers, each taking whole test modules (a module's gateways and clusters are its
# own fixtures; each worker starts its own emulators): most tests wait on sockets and timers, so
# two share two cores well. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
test: deps lint
	cd clients/js && node --test
	$(PY) -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)

functions-discover: $(VENV_STAMP) $(NODE_STAMP)
	$(PY) scripts/functions_discover.py

images:
	scripts/containers.sh engine-start bases images

engine-stop:
	scripts/containers.sh engine-stop

up-containers: images
	$(PY) -m emulator up --containers

# The emulators as containers (testcontainers) under the integration and end-to-end tests, then
# the whole stack under docker-compose. The engine is stopped afterwards, whatever the outcome,
# unless it was already running (a `make up-containers` in another terminal).
test-containers: deps
	@started=$$(date +%s); \
	was_up=$$(docker info >/dev/null 2>&1 && echo 1); \
	scripts/containers.sh engine-start bases images && \
	EMULATORS=containers $(PY) -m pytest -n 2 --dist loadfile -m "not long and not gateway_only" tests/containers tests/integration tests/e2e; \
	status=$$?; [ -n "$$was_up" ] || scripts/containers.sh engine-stop; \
	echo "test-containers: $$(( $$(date +%s) - started )) s"; exit $$status

test-unit: $(VENV_STAMP)
	$(PY) -m pytest tests/unit

# Regenerate the three hashed locks from pyproject.toml (build-system.requires, dependencies,
# the dev extra) and functions/requirements.in. Pins already in a lock are kept unless a
# requirement no longer allows them; LOCK_ARGS=--upgrade (or --upgrade-package NAME) moves
# them. The gateway's and the function's locks are resolved within the dev lock, so the images
# run the very versions the tests ran. Resolved for the images' platform, CPython 3.11 on
# Linux; tests/contract/test_locks.py holds the locks to pyproject.toml.
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform linux --custom-compile-command "make lock" $(LOCK_ARGS)
BUILD_REQUIRES = $(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))'

lock: $(VENV_STAMP)
	$(BUILD_REQUIRES) | $(UV_COMPILE) pyproject.toml --extra dev functions/requirements.in - \
		-o requirements/dev.txt
	$(BUILD_REQUIRES) | $(UV_COMPILE) pyproject.toml - -c requirements/dev.txt \
		-o requirements/gateway.txt
	$(UV_COMPILE) functions/requirements.in -c requirements/dev.txt -o functions/requirements.txt

# Everything on Google Cloud in one re-runnable command (scripts/deploy, docs/deployment.md):
# topics, secrets, IAM, Firestore rules and indexes, the gateway on Cloud Run, the sweep function
# and its job. DRY_RUN=1 prints the commands and needs nothing but Python; a real run needs gcloud
# (logged in) and the pinned firebase-tools, installed here, and builds the console's page first:
# the image serves it, and .gcloudignore lets it into Cloud Build's context.
DEPLOY_DRY_RUN = $(filter-out 0 no false,$(DRY_RUN))
deploy: $(if $(DEPLOY_DRY_RUN),,$(NODE_STAMP) $(CONSOLE_BUILD))
	@if [ -z "$(PROJECT)" ] || [ -z "$(REGION)" ]; then \
		echo "usage: make deploy PROJECT=my-project REGION=europe-west1 [DRY_RUN=1]" \
			"[PRESENCE_EVENTS_TOPIC=topic] [PUBSUB_TOPIC=topic] [TAG=tag]" >&2; exit 2; fi
	@$(PYTHON) -m scripts.deploy --project "$(PROJECT)" --region "$(REGION)" \
		$(if $(DEPLOY_DRY_RUN),--dry-run) $(if $(PUBSUB_TOPIC),--pubsub-topic "$(PUBSUB_TOPIC)") \
		$(if $(PRESENCE_EVENTS_TOPIC),--presence-events-topic "$(PRESENCE_EVENTS_TOPIC)") \
		$(if $(TAG),--tag "$(TAG)")

# The Node ws server the load scenario measures the gateway against.
BENCH_NODE_STAMP := tests/bench/node/node_modules/.installed-stamp
$(BENCH_NODE_STAMP): tests/bench/node/package.json tests/bench/node/package-lock.json
	cd tests/bench/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Then the charts of docs/benchmarks.md: the run's results are merged into the committed copy,
# docs/benchmarks/results.json (the scenarios run replace theirs), and every chart is drawn
# from it, whatever the run's outcome; the exit status is the run's (the charts' when they fail).
bench: deps $(BENCH_NODE_STAMP)
	$(PY) -m tests.bench; status=$$?; \
	$(PY) -m tests.bench.charts --publish .run/bench/results.json || status=$$?; exit $$status

# The chaos soak (docs/soak.md): three instances, the sweep and the emulators under SOAK_SECONDS
# of seeded random faults while SOAK_CLIENTS clients connect; SOAK_SEED repeats a run.
SOAK_SECONDS ?= 600
soak: deps
	$(PY) -m tests.soak --seconds $(SOAK_SECONDS) $(if $(SOAK_SEED),--seed $(SOAK_SEED)) \
		$(if $(SOAK_CLIENTS),--clients $(SOAK_CLIENTS)) $(if $(SOAK_ADVISORY),--advisory $(SOAK_ADVISORY))

# The tables of docs/capacity.md, from the constants of scripts/capacity.py; USERS=1000000 (or a
# space-separated list) prints the same figures for those sizes.
capacity: $(VENV_STAMP)
	@$(PY) -m scripts.capacity $(foreach n,$(USERS),--users $(n))

clean:
	rm -rf $(VENV) emulator/node_modules tests/bench/node/node_modules functions/venv .run .mypy_cache .ruff_cache .pytest_cache
