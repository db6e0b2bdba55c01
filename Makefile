# am-segm: every set-up step lives here, so a fresh clone needs only `make run` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATASET := data/inference/dataset
ROWS ?= 50
COLS ?= 50

# Models are built offline: nothing may be fetched from a model hub at run time.
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install run test lint sample model clean-data help

help:
	@echo "make run      set up, generate the sample dataset if missing, run the pipeline on it"
	@echo "make test     set up and run the whole test suite"
	@echo "make install  create or update the virtual environment in $(VENV)"
	@echo "make lint     ruff over the package and tests"

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install:
	rm -f $(STAMP)
	$(MAKE) $(STAMP)

$(DATASET): | $(STAMP)
	$(BIN)/python -m am.synth dataset $(DATASET) --rows $(ROWS) --cols $(COLS) --seed 7

sample: $(DATASET)

run: $(STAMP) $(DATASET)
	$(BIN)/python -m am.pipeline $(DATASET) --rows $(ROWS) --cols $(COLS)

test: $(STAMP)
	$(BIN)/python -m ruff check am tests benchmarks examples
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/python -m ruff check am tests benchmarks examples

clean-data:
	rm -rf data/inference
