# unlade — make demo: see it work; make test: the whole suite (what CI runs);
# make fuzz: every fuzz harness for FUZZ_SECONDS each (fuzz/run.py; summary in build/fuzz).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2
FUZZ_SECONDS ?= 60
FUZZ_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
FUZZ_HARNESSES ?=

.PHONY: demo test deps venv lint fuzz clean

deps:
	@scripts/install-deps.sh

$(PY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(PY)

venv: $(PY)

demo: deps venv
	@scripts/demo.sh

lint: venv
	$(VENV)/bin/ruff check src tests fuzz

fuzz: venv
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS) $(FUZZ_HARNESSES)

test: deps venv lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
