# Everything sets itself up: a virtual environment in $(VENV) with the dependencies, built on
# first use and again whenever pyproject.toml changes.
#   make bench                 the benchmark suite on every device here, CSV in results/
#   make bench PROFILE=full    larger batch sizes, more rounds (PROFILE=tiny: seconds, smoke test)
#   make bench ARGS="-k transformer"   any pytest arguments, e.g. a subset of cases
#   make report                summary of results/latest.csv (FORMAT=md|html, OUT=file, CSV=...)
#   make compare A=x.csv B=y.csv   compare two reports (FORMAT=csv|md|html, OUT=file)
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

.PHONY: setup bench test lint format docs report compare clean

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

CSV ?= results/latest.csv
FORMAT ?= console
OUT ?=
OUT_ARG = $(if $(OUT),--out $(OUT))

report: $(STAMP)
	$(BIN)/python -m bench_lib report $(CSV) --format $(FORMAT) $(OUT_ARG)

compare: $(STAMP)
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make compare A=first.csv B=second.csv [FORMAT=md] [OUT=file]" >&2; exit 2; }
	$(BIN)/python -m bench_lib compare $(A) $(B) --format $(FORMAT) $(OUT_ARG)

docs: $(STAMP)
	$(BIN)/python -m bench_lib.schema docs/results.md

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
