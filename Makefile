# CXRTrek-JAX. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2
DEMO_DIR ?= demo_out

.DEFAULT_GOAL := help
.PHONY: help install test test-slow demo clean

help:  ## list targets with one line each
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 24

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev,torch]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv (if missing) and install the project with its dev and torch extras

test: $(STAMP)  ## run the test suite (no slow tests), 8 simulated CPU devices
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) tests

test-slow: $(STAMP)  ## run only the slow tests (multi-process, hard-kill resume, ...)
	$(PY) -m pytest -m slow tests

demo: $(STAMP)  ## the main job end to end on a generated phantom CXRTrek set
	$(PY) -m cxrtrek_jax.demo --out $(DEMO_DIR)

clean:  ## remove build and demo outputs (keeps .venv)
	rm -rf build dist *.egg-info $(DEMO_DIR) .pytest_cache
