# fedsim on a fresh machine: `make run` (set up, then the default run) and `make test` (set up, then what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup run test lint docs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0   # the CPU build (a CUDA build: install it first yourself)
	$(BIN)/python -m pip install --quiet -e ".[test,docs,dev]"
	# ByzFL, the implementation tests/byzantine/ checks against, without its requirements: its package
	# __init__ (never run: tests/helpers/byzfl.py) wants torchvision, whose PyPI build does not load with the CPU
	# torch and, once installed, breaks transformers' BERT classes. Its checked modules need only torch and scipy.
	$(BIN)/python -m pip install --quiet --no-deps byzfl==0.0.11
	touch $@

run: setup
	$(BIN)/python main.py $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports  # the layers of docs/reference/architecture.md (pyproject.toml's [tool.importlinter])

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint docs
	$(BIN)/python -m pytest -q -n 2 tests $(ARGS)
