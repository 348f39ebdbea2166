# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
HOST   ?= 127.0.0.1
PORT   ?= 8000
DATA_DIR ?= ./data
WORKERS ?=
BIN    := $(VENV)/bin

EVENTS ?= 3000

.PHONY: run test test-fast lint bench clean loadtest status screenshot image postgres-image compose-up compose-down

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamp files make the install step run once, and again when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(VENV)/.installed $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(VENV)/.installed $(VENV)/.installed-dev $@

run: $(VENV)/.installed
	$(BIN)/event-analytics serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR) $(if $(WORKERS),--workers $(WORKERS))

# Against a running `make run` (same HOST/PORT): load, report, count check (exit 0 = PASS).
loadtest: $(VENV)/.installed
	$(BIN)/event-analytics loadtest --url http://$(HOST):$(PORT) --events $(EVENTS)

status: $(VENV)/.installed
	$(BIN)/event-analytics status --url http://$(HOST):$(PORT)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# Three test processes (pytest-xdist), a test file never split between them: a file's
# module fixtures (services, engines) start once, as they do in one process. Three on this
# 2-core machine: the suite is mostly CPU, but each process also waits on the services and
# engines it starts, and a third fills those waits (quiet clean clone, same commit: pytest
# 17 min 28 s with two, 14 min 37 s with three, CPU 1,592 and 1,557 s; issue 22's note).
# TEST_PROCS=0 runs it in this process alone.
TEST_PROCS ?= 3
test: lint
	$(BIN)/python -m pytest -n $(TEST_PROCS) --dist loadfile $(PYTEST_ARGS)

# The edit-run loop: lint, the in-process HTTP tests (tests/inproc.py) and the tests that
# start no service process, on the real engines still; not the tests marked slow (service
# processes, fuzzing, the large Hypothesis models, the modules that run the CLI on every
# engine: tests/conftest.py). `make test` runs everything.
test-fast: lint
	$(BIN)/python -m pytest -n $(TEST_PROCS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

# Throughput/latency ratios measured in one run (not part of `make test`).
# The import's rate is measured at the issue's size (#26): 3,000,000 events.
IMPORT_BENCH_ARGS ?= --events 3000000
# The archive queries against archive size, beside ClickHouse (#23): each size's archive is
# generated once (~20,000 events/s at load 7) and kept under /tmp/ea-scale-<events>.
SCALE_BENCH_ARGS ?= --sizes 3000000,10000000,30000000
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/analytics_bench.py $(ANALYTICS_BENCH_ARGS)
	$(BIN)/python benchmarks/site_page_bench.py $(SITE_BENCH_ARGS)
	$(BIN)/python benchmarks/query_storm.py $(STORM_BENCH_ARGS)
	@# PostgreSQL delivery: events/s, the delivery process's and PostgreSQL's CPU per event.
	$(BIN)/python benchmarks/postgres_bench.py $(POSTGRES_BENCH_ARGS)
	$(BIN)/python benchmarks/import_bench.py $(IMPORT_BENCH_ARGS)
	$(BIN)/python benchmarks/scale_bench.py $(SCALE_BENCH_ARGS)

# Re-render docs/dashboard.png and the site page's docs/dashboard-site{,-phone}.png: the
# dashboard tests' screenshots of a real run (needs chromium).
screenshot: $(VENV)/.installed-dev
	EA_DOCS_SCREENSHOT=1 $(BIN)/python -m pytest tests/test_dashboard.py -k renders_what_was_sent
	EA_DOCS_SCREENSHOT=1 $(BIN)/python -m pytest tests/test_dashboard_site.py -k phone_width_and_screenshots

# --- Containers --------------------------------------------------------------------
# docker if its daemon answers (a docker CLI alone is not enough), else podman. With podman and ../shared/containers/base-images.sh
# present (machines that reach no container registry), that script runs first and the
# local base images it builds replace the public ones; elsewhere nothing changes.
ifndef CONTAINER_ENGINE
CONTAINER_ENGINE := $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
endif
IMAGE ?= event-analytics:latest
BASE_IMAGES ?= ../shared/containers/base-images.sh
# compose-up starts the API on one Redis; PROFILE=cluster: on the 3+3 Valkey Cluster;
# PROFILE=postgres: on the Redis, delivering the archive to a PostgreSQL.
PROFILE ?=
COMPOSE_PROJECT ?= event-analytics
export EA_IMAGE := $(IMAGE)
ifeq ($(CONTAINER_ENGINE),podman)
# --format docker keeps HEALTHCHECK (the OCI format has none); pip in the build reaches
# PyPI as the host does.
BUILD_FLAGS ?= --format docker --network host
COMPOSE ?= podman-compose
# Debian's podman-compose 1.0.3 knows no profiles: services are named instead.
COMPOSE_ALL ?=
ifneq ($(wildcard $(BASE_IMAGES)),)
LOCAL_BASE := $(BASE_IMAGES)
export PYTHON_IMAGE ?= localhost/ea-base/python:3.11
export REDIS_IMAGE ?= localhost/ea-base/redis:7
export VALKEY_IMAGE ?= localhost/ea-base/valkey:8.1
# postgres:16 cannot be pulled either: Debian's PostgreSQL, built here (postgres-image).
export POSTGRES_IMAGE ?= localhost/ea-postgres:15
DEBIAN_IMAGE ?= localhost/ea-base/debian:bookworm
endif
else
BUILD_FLAGS ?=
COMPOSE ?= docker compose
COMPOSE_ALL ?= --profile cluster --profile postgres
endif

image:
	$(if $(LOCAL_BASE),$(LOCAL_BASE) >/dev/null)
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) -t $(IMAGE) .

# PostgreSQL from Debian's package (deploy/postgres), for the postgres profile where no
# registry is reachable: on base-images.sh's Debian image there, on debian:bookworm elsewhere.
postgres-image:
	$(if $(LOCAL_BASE),$(LOCAL_BASE) >/dev/null)
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) $(if $(DEBIAN_IMAGE),--build-arg BASE_IMAGE=$(DEBIAN_IMAGE)) -t $(or $(POSTGRES_IMAGE),localhost/ea-postgres:15) deploy/postgres

# Detached; the API answers on EA_HTTP_PORT (8000), EA_CLUSTER_HTTP_PORT (8001) with
# PROFILE=cluster, or EA_POSTGRES_HTTP_PORT (8002) with PROFILE=postgres, once
# /health/ready is 200.
COMPOSE_SERVICE = $(if $(filter cluster,$(PROFILE)),api-cluster,$(if $(filter postgres,$(PROFILE)),api-postgres,api))
compose-up: image $(if $(and $(LOCAL_BASE),$(filter postgres,$(PROFILE))),postgres-image)
	$(COMPOSE) -p $(COMPOSE_PROJECT) up -d --no-build $(COMPOSE_SERVICE)

# Stops and removes the containers of both profiles; the volumes (data) stay unless
# COMPOSE_DOWN_ARGS=-v.
compose-down:
	$(COMPOSE) -p $(COMPOSE_PROJECT) $(COMPOSE_ALL) down $(COMPOSE_DOWN_ARGS)
ifeq ($(CONTAINER_ENGINE),podman)
	@# podman-compose 1.0.3 leaves the project's network behind.
	-@podman network rm $(COMPOSE_PROJECT)_default >/dev/null 2>&1
endif
