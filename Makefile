# Everything sets itself up: a virtual environment in $(VENV) with the dependencies, built on
# first use and again whenever pyproject.toml changes.
#   make bench                 the benchmark suite on every device here, CSV in results/
#   make bench PROFILE=full    larger batch sizes, more rounds (PROFILE=tiny: seconds, smoke test)
#   make bench PROFILE=hf      BERT-base and GPT-2 small (installs the hf extra: transformers)
#   make bench MODELS=mlp,examples/custom_model.py:make_trainable   zoo and your own models
#   make bench BATCH_SIZES=1,8 DEVICES=cpu DTYPES=float32,bfloat16   batch sizes, devices, precisions
#   make bench COMPILE=on ARGS="-k inference"   eager vs torch.compile
#   make bench ARGS="-k transformer"   any pytest arguments, e.g. a subset of cases
#   make report                summary of results/latest.csv (FORMAT=md|html, OUT=file, CSV=...)
#   make compare A=x.csv B=y.csv   compare two reports (FORMAT=csv|md|html, OUT=file)
#   make gate BASE=origin/main REPEAT=5   base and this checkout measured interleaved, then gated
#   make gate-memory           tiny CPU run, memory gated against results/baseline/ (CI does this)
#   make gate-audit            false alarms and sensitivity of the gate (long: about 35 minutes)
#   make gpu-check OUT=dir     on a GPU machine, with its own python3, nothing installed (~4 min on
#                              an H200): preflight, device facts, matmul vs Timer, a small benchmark
#                              twice, CUDA tests, the GPU targets; CSV + reports + checks.json in OUT
#   make test                  the tests;   make lint   ruff and mypy
# TORCH_SPEC picks the torch build, e.g. TORCH_SPEC="torch==2.11.0" or a wheel path.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= default
ARGS ?=
BENCH_COLUMNS ?= median,iqr,rounds,iterations

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HF_STAMP := $(VENV)/.installed-hf
MODELS ?=
BATCH_SIZES ?=
DEVICES ?=
DTYPES ?=
COMPILE ?=
BENCH_OPTS = $(if $(MODELS),--bench-models=$(MODELS)) $(if $(BATCH_SIZES),--bench-batch-sizes=$(BATCH_SIZES)) \
	$(if $(DEVICES),--bench-devices=$(DEVICES)) $(if $(DTYPES),--bench-dtypes=$(DTYPES)) \
	$(if $(COMPILE),--bench-compile=$(COMPILE))

.PHONY: gpu-check setup setup-hf bench test lint format docs report compare gate gate-memory baseline-memory gate-audit clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,lora]"
	touch $@

$(HF_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,lora,hf]"
	touch $@

setup-hf: $(HF_STAMP)

bench: $(STAMP) $(if $(filter hf,$(PROFILE)),$(HF_STAMP))
	$(BIN)/python -m pytest benchmarks/ -p no:cacheprovider --bench-profile=$(PROFILE) \
		--benchmark-columns=$(BENCH_COLUMNS) $(BENCH_OPTS) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest tests/ $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

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

# The memory figures are exact byte counts, so a tiny CPU run gates them on any machine with the
# same torch version. `make baseline-memory` rewrites the baseline: commit it with the change
# that moved the figures, saying why.
MEMORY_BASELINE := results/baseline/tiny-cpu.csv
TINY_RUN = $(BIN)/python -m pytest benchmarks/ -q -p no:cacheprovider --benchmark-disable \
	--bench-profile=tiny --bench-devices=cpu --bench-history=off --bench-results-dir=$(1)

gate-memory: $(STAMP)
	rm -rf .bench-gate
	$(call TINY_RUN,.bench-gate) > .bench-gate.log 2>&1 || { tail -n 30 .bench-gate.log; exit 1; }
	$(BIN)/python -m bench_lib gate $(MEMORY_BASELINE) .bench-gate/latest.csv --only memory

baseline-memory: $(STAMP)
	rm -rf .bench-gate
	$(call TINY_RUN,.bench-gate)
	mkdir -p results/baseline
	cp .bench-gate/latest.csv $(MEMORY_BASELINE)
	cp .bench-gate/latest.samples.csv $(MEMORY_BASELINE:.csv=.samples.csv)

# `make gate`: BASE (a git ref) is checked out in a worktree; it and this checkout are measured
# REPEAT times each, alternately (ABAB), one worker process per group (each run is one sample of
# the gate's test); then `bench_lib gate` decides. Reports, verdicts and the gate's exit code (0 OK,
# 1 regression, 3 undecided; make itself exits 2 on any of them) stay in results/gate/.
BASE ?= origin/main
REPEAT ?= 5
GATE_ARGS ?=
GATE_RUN = PYTHONPATH=. $(abspath $(BIN))/python -m pytest benchmarks/ -q -p no:cacheprovider --benchmark-disable \
	--bench-processes=1 --bench-history=off --bench-results-dir=$(1) $(ARGS) > /dev/null; rc=$$?; [ $$rc -le 1 ] || exit 2

gate: $(STAMP)
	rm -rf results/gate; git worktree remove --force .bench-base 2>/dev/null || rm -rf .bench-base
	git worktree add --force --detach .bench-base $(BASE)
	for i in $$(seq $(REPEAT)); do \
		echo "run $$i of $(REPEAT): base, then candidate"; \
		(cd .bench-base && $(call GATE_RUN,$(CURDIR)/results/gate/base)) || exit 2; \
		$(call GATE_RUN,$(CURDIR)/results/gate/candidate) || exit 2; \
	done
	git worktree remove --force .bench-base
	$(BIN)/python -m bench_lib gate results/gate/base results/gate/candidate \
		--md results/gate/verdict.md --json results/gate/verdict.json $(GATE_ARGS); \
		rc=$$?; echo $$rc > results/gate/exit_code; exit $$rc

# No virtual environment: GPU machines often have no network; their python3 has torch etc.
# The preflight is a plain script (standard library only): a missing or too old package is one
# line, not an import error. ARGS="--device cpu" runs the same pipeline on the CPU (~1-2 min).
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) bench_lib/preflight.py $(ARGS)
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m bench_lib.gpucheck --out $(abspath $(or $(OUT),results/gpu-check)) $(ARGS)

AUDIT_ARGS ?=
gate-audit: $(STAMP)
	$(BIN)/python -m bench_lib.gate.audit $(AUDIT_ARGS)

docs: $(STAMP)
	$(BIN)/python -c "from bench_lib.records.schema import write_docs; write_docs('docs/results.md')"
	$(BIN)/python -c "from pathlib import Path; from bench_lib.options import documented; \
		p = Path('docs/options.md'); p.write_text(documented(p.read_text()))"

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks .bench-gate .bench-gate.log
