# The README's two commands: `make demo` and `make test`. Each creates .venv (if missing)
# and installs cubepipe into it (editable) with the extras it needs, then runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
LINTED := pipeline storage tests benchmarks

.PHONY: demo test test-standin test-slow lint bench test-gpu clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip "setuptools>=77" wheel

$(VENV)/.installed-core: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints/torch-cpu.txt | $(BIN)/python
	$(PIP) install -c constraints/torch-cpu.txt -e ".[dev,distributed,video,ae,cloud,geo,netcdf]"
	touch $@ $(VENV)/.installed-core

demo: $(VENV)/.installed-core
	$(BIN)/cubepipe demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy storage pipeline

# Tests run in parallel worker processes, one per core (at most 4): CI has 2 cores.
# Tests marked `slow` (full-size decompression bombs) are
# left to `make test-slow`.
# Then the GPU paths run against the strict CuPy stand-in (tests/gpu_standin/README.md).
test: lint
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 -m "not slow"
	$(MAKE) --no-print-directory test-standin

STANDIN := $(CURDIR)/tests/gpu_standin/site
test-standin: $(VENV)/.installed-dev
	PYTHONPATH=$(STANDIN) $(BIN)/python -m pytest -q -n auto --maxprocesses=4 -p no:cacheprovider \
		-m "gpu and not slow" tests docs tests/gpu_standin

test-slow: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 -m slow

$(VENV)/.installed-bench: pyproject.toml constraints/torch-cpu.txt | $(BIN)/python
	$(PIP) install -c constraints/torch-cpu.txt -e ".[dev,distributed,video,ae,cloud,geo,netcdf,bench]"
	touch $@ $(VENV)/.installed-dev $(VENV)/.installed-core

bench: $(VENV)/.installed-bench
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# On the GPU machine (no network): install with pip --target as ../shared/device/README.md
# says, then `make test-gpu PY=python3`.
PY ?= $(BIN)/python
test-gpu:
	$(PY) -m pytest -q -m gpu

clean:
	rm -rf $(VENV) demo-output build *.egg-info .pytest_cache .ruff_cache
