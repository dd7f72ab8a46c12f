# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.skinflow-installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-all mutants

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch pinned first: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(READY)

setup: $(READY)

demo: $(READY)
	$(BIN)/python -m skinflow pipeline --config configs/pipeline/demo.yaml

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
