# Quick start: `make demo` runs the whole flow on the bundled sample, `make test` runs the tests.
# Each creates .venv and installs what it needs. TORCH is the requirement used only when the
# environment has no torch yet (a torch already there, CUDA or not, is kept); set TORCH= to skip.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test test-all lint format bench faults gpu-stage gpu-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) $(TORCH)
	$(PIP) -e .
	@touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.core
	$(PIP) -e ".[dev]"
	@touch $@

demo: $(VENV)/.core
	$(BIN)/napari-mutualseg demo --out demo_output --overwrite

test: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest

test-all: $(VENV)/.dev
	$(BIN)/python -m pytest -m ""

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(VENV)/.dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/run.py

faults: $(VENV)/.dev
	$(BIN)/python benchmarks/faults.py

# The GPU check (benchmarks/README.md, "GPU check"): stage its data, rehearse it on the CPU.
gpu-stage:
	bash benchmarks/stage_gpu_data.sh

gpu-smoke: $(VENV)/.core
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh --smoke

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache
