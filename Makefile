# Fresh machine -> working venv: torch first (the local CPU wheel; a bare `pip install torch`
# would pull a multi-GB CUDA build), then the package with its test extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup train test bench clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,export]"
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m hyperrl.train --env-family cartpole-mass $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

clean-venv:
	rm -rf $(VENV)
