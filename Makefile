# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.skinflow-installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo demo-quick test test-all mutants

$(READY): pyproject.toml
	@echo "[setup] creating $(VENV) and installing torch 2.13.0 (CPU) and the kit's packages (2-4 minutes, once)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "[setup] 1/2 torch 2.13.0, pinned first: an unpinned torch would pull a multi-GB CUDA build"
	$(BIN)/python -m pip install --progress-bar off "torch==2.13.0"
	@echo "[setup] 2/2 the kit and its packages (lightning, transformers, peft, mlflow, ...)"
	$(BIN)/python -m pip install --progress-bar off -e ".[dev]"
	touch $(READY)
	@echo "[setup] done"

setup: $(READY)

demo: $(READY)
	$(BIN)/python -m skinflow pipeline --config configs/pipeline/demo.yaml

# a first look in about 2 minutes: the same three stages and test, a few epochs and steps each
demo-quick: $(READY)
	$(BIN)/python -m skinflow pipeline --config configs/pipeline/demo_quick.yaml

# the default suite (CI); the demo's learning run (tests/test_demo_pipeline.py, about 13 min on 2 cores) is marked
# slow and runs in test-all
test: $(READY)
	$(BIN)/python -m pytest -q -rs -m "not slow"

test-all: $(READY)
	$(BIN)/python -m pytest -q -rs

# mutation testing of the modules where a wrong number is silent (tools/mutants.py; not part of CI, about an hour
# on 2 cores): MODULES="rl/grpo data/ontology" for some of them
mutants: $(READY)
	$(BIN)/python -m pip install -q "mutmut==3.8.1"
	$(BIN)/python tools/mutants.py $(MODULES)
