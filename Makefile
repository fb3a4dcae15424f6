# ib-stream: `make run` and `make test` do all set-up on a fresh machine (Python 3.11 + pip).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup run test lint typecheck pytest test-slow bench bench-orderflow clean browser screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the package metadata changed (idempotent, fast on the second run).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,duckdb]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/ib-stream serve $(ARGS)

lint: setup
	$(BIN)/ruff check ib_stream tests bench
	$(BIN)/ruff format --check ib_stream tests bench
	$(BIN)/lint-imports --no-cache

typecheck: setup
	$(BIN)/mypy

# The browser tests drive Debian's Chromium (Playwright cannot download browsers here): installed once with apt-get.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "Chromium is missing at $(CHROMIUM) and apt-get is not available: install Chromium there"; exit 1; }
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null

browser: $(CHROMIUM)

pytest: setup $(CHROMIUM)
	$(BIN)/python -m pytest $(ARGS)

test: lint typecheck pytest

test-slow: setup $(CHROMIUM)
	$(BIN)/python -m pytest -m slow $(ARGS)

# The dashboard's screenshots in docs/images/: the service on the simulated market, in Chromium, dark and light.
screenshots: setup $(CHROMIUM)
	$(BIN)/python -m tests.support.screenshots

bench: setup
	$(BIN)/python bench/store_bench.py $(ARGS)

bench-orderflow: setup
	$(BIN)/python bench/orderflow_bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
