# Two commands on a fresh machine:  make demo   |   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/lungvol segment sample_data/phantom_small/dicom -o demo_output/phantom_small --dicom-seg --overwrite

# The suite runs on one worker per core (at most 4); a test file stays on one worker, so the
# module-scoped fixtures (a segmented real chest, a built image) are made once per file.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --maxprocesses=4 --dist loadfile

test: install
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-fast: install
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf demo_output .pytest_cache
