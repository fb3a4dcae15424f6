# ib-stream: `make run` and `make test` do all set-up on a fresh machine (Python 3.11 + pip).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup run test lint typecheck pytest test-slow bench bench-orderflow clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the package metadata changed (idempotent, fast on the second run).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
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

pytest: setup
	$(BIN)/python -m pytest $(ARGS)

test: lint typecheck pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow $(ARGS)

bench: setup
	$(BIN)/python bench/store_bench.py $(ARGS)

bench-orderflow: setup
	$(BIN)/python bench/orderflow_bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
