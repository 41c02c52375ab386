# Everything sets itself up: a virtual environment in $(VENV) with the dependencies, built on
# first use and again whenever pyproject.toml changes.
#   make bench                 the benchmark suite on every device here, CSV in results/
#   make bench PROFILE=full    larger batch sizes, more rounds (PROFILE=tiny: seconds, smoke test)
#   make bench ARGS="-k transformer"   any pytest arguments, e.g. a subset of cases
#   make test                  the tests;   make lint   ruff
# TORCH_SPEC picks the torch build, e.g. TORCH_SPEC="torch==2.11.0" or a wheel path.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= default
ARGS ?=
BENCH_COLUMNS ?= median,iqr,rounds,iterations

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup bench test lint format docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks/ -p no:cacheprovider --bench-profile=$(PROFILE) \
		--benchmark-columns=$(BENCH_COLUMNS) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest tests/ $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: $(STAMP)
	$(BIN)/python -m bench_lib.schema docs/results.md

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
