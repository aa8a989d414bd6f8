# `make demo` and `make test` each set up .venv from scratch on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2 --dist loadfile -m "not benchmark"

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch first (CPU build), then FBGEMM's CPU package, then TorchRec without its CUDA
# fbgemm-gpu dependency, then the pinned rest. Order matters: see ARCHITECTURE.md.
$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q fbgemm-gpu-cpu==1.8.0
	$(PY) -m pip install -q --no-deps torchrec==1.8.0
	$(PY) -m pip install -q -r requirements.lock -r requirements-dev.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recstack demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
