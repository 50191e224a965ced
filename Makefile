# One command for every gate: `make lint test` is what CI runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= .homing-data
# Where `make run` serves (HOST:PORT); a new site publishes this endpoint to devices.
LISTEN ?= 127.0.0.1:8443
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean system-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/homing serve --data $(DATA) --init --listen $(LISTEN)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# Debian tools the tests drive for real (Chromium, promtool, systemd-analyze).
system-tools:
	scripts/install-system-tools.sh

# Test workers (pytest-xdist); TEST_WORKERS=0 runs every test in this process.
TEST_WORKERS ?= 2

test: $(STAMP) lint system-tools
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --durations=15

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache .mypy_cache .ruff_cache test-artifacts
