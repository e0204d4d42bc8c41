# dsim: everything runs from a local virtual environment. torch is pinned and installed first, because
# an unpinned torch pulls gigabytes of CUDA packages; the CPU wheel 2.13.0 is what this project targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: setup run test bench lint clean

$(BIN)/dsim: setup.cfg setup.py pyproject.toml dsim/_zmqio.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

setup: $(BIN)/dsim

# The main job: CollabDM on the embedded digits dataset, 10 nodes around a server.
run: setup
	$(BIN)/dsim launch --nodes 10 --topology star

test: setup
	$(BIN)/pytest -q

# Figures go to benchmarks/results/*.json.
bench: setup
	$(BIN)/python benchmarks/bench_runtime.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_dm.py
	$(BIN)/python benchmarks/bench_mtt.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
