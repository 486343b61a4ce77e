# Two entry points: `make train` (set up, then a small meta-training run) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup train test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is installed first, pinned, so the project's install does not pull another build. Where pip
# would fetch the multi-GB CUDA build and no GPU is wanted:
#   make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIP_ARGS) "torch==2.13.0"
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
