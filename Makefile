# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# CPU by default: reproducible, and quiet when libtpu (the tpu-targets extra) is installed.
# `make demo JAX_PLATFORMS=` lets JAX pick an attached GPU/TPU instead.
JAX_PLATFORMS ?= cpu
export JAX_PLATFORMS

.PHONY: demo test test-fast test-gpu-targets lint bench bench-plan readme clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run the quickstart sweep (small GPT, remat x precision) and print the comparison table.
demo: $(STAMP)
	$(BIN)/jaxmem run experiments/quickstart.yaml --out runs/quickstart

## Run the test suite on the CPU with 8 fake devices (tests/conftest.py sets them up), one
## worker process per core (XLA compiles are mostly single-threaded); a test file stays on one.
WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile

## Same, without the slow tests and the virtual-TPU compiles.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile -m 'not slow and not tpu_target'

## Virtual NVIDIA GPU targets (gpu:h100x8, ...): a separate env with the CUDA plugin (~5 GB
## download, no GPU needed), then the tests marked gpu_targets.
GPU_VENV ?= .venv-gpu
test-gpu-targets:
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/python -m pip install --quiet -e '.[dev,gpu-targets]'
	$(GPU_VENV)/bin/python -m pytest -m gpu_targets tests/test_gpu_targets.py

## Regenerate the README's measured demo table and its results schema (tests check both).
readme: $(STAMP)
	$(BIN)/python scripts/update_readme.py

## Lint (pyflakes, pycodestyle, isort, bugbear rules; see pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check jaxmem tests benchmarks examples scripts conftest.py

## Compile-time benchmark for GPT-2 small (figures go in benchmarks/RESULTS.md).
bench: $(STAMP)
	$(BIN)/python benchmarks/compile_time.py

## Plan GPT-2 small with FSDP over a virtual TPU v5e 16x16 (256 chips); about 1 min.
bench-plan: $(STAMP)
	/usr/bin/time -f "wall %e s, peak RSS %M KiB" $(BIN)/jaxmem run experiments/plan_v5e.yaml

clean:
	rm -rf $(VENV) $(GPU_VENV) runs .pytest_cache *.egg-info
