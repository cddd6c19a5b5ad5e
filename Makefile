# unlade — make demo: see it work; make test: the whole suite (what CI runs).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2

.PHONY: demo test deps venv lint clean

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
	$(VENV)/bin/ruff check src tests

test: deps venv lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
