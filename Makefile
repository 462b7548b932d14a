# Quick start: `make train` and `make test` each create .venv (when there is none) and install the
# project into it first. ARGS passes Hydra overrides: make train ARGS="likelihood=gaussian data=cifar".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vae_lab-installed

.PHONY: setup train test test-slow clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m vae_lab.train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
