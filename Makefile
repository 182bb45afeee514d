# Fresh machine -> working venv: torch first (the local CPU wheel; a bare `pip install torch`
# would pull a multi-GB CUDA build), then the package with its test extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup train test bench gpu-smoke clean-venv

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

# The benchmarks' quick modes: a few minutes on 2 CPU cores (tables on stdout, outputs under
# runs/). Left out: bench_train.py and bench_compare.py have no quick mode (every part trains
# whole runs: minutes to hours on a CPU); sweep_adapt_settings.py needs pre-trained runs (--run).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sim.py
	$(BIN)/python benchmarks/bench_gym_api.py --quick --part env
	$(BIN)/python benchmarks/bench_mujoco.py --quick
	$(BIN)/python benchmarks/bench_adapt.py --fast

# PASS/FAIL per CUDA code path in a few minutes; without CUDA one line and exit 0
# (ARGS=--allow-cpu runs the same steps on the CPU).
gpu-smoke: $(STAMP)
	$(BIN)/python benchmarks/gpu_smoke.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
