# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
HOST   ?= 127.0.0.1
PORT   ?= 8000
DATA_DIR ?= ./data
WORKERS ?=
BIN    := $(VENV)/bin

EVENTS ?= 3000

.PHONY: run test lint bench clean loadtest status screenshot

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

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

# Throughput/latency ratios measured in one run (not part of `make test`).
bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/analytics_bench.py $(ANALYTICS_BENCH_ARGS)

# Re-render docs/dashboard.png: the dashboard test's screenshot (needs chromium).
screenshot: $(VENV)/.installed-dev
	EA_DOCS_SCREENSHOT=1 $(BIN)/python -m pytest tests/test_dashboard.py -k renders_what_was_sent
