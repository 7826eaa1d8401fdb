# `make run`: set up and run the main job. `make test`: set up and run the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: setup run test lint clean

$(BIN)/risbench: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: a CPU wheel; anything else would pull CUDA wheels.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/risbench

setup: $(BIN)/risbench

run: setup
	$(BIN)/risbench run experiments/fpn_ablation.yaml

test: setup
	$(BIN)/ruff check risbench tests scripts
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check risbench tests scripts
	$(BIN)/ruff format --check risbench tests scripts

clean:
	rm -rf $(VENV) runs .pytest_cache
