# Two entry points: `make train` (set up, then a small meta-training run) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup train test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned first so pip takes the CPU build, not a multi-GB CUDA one.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(BIN)/python train.py $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

# metaft vs higher vs torchopt, both suites (see benchmarks/README.md).
bench: setup
	PY=$(BIN)/python benchmarks/run.sh $(ARGS)

clean:
	rm -rf $(VENV) outputs/* multirun
