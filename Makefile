# CXRTrek-JAX. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2
DEMO_DIR ?= demo_out

.DEFAULT_GOAL := help
.PHONY: help install browser-deps test test-slow demo clean

help:  ## list targets with one line each
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 24

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev,torch]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv (if missing) and install the project with its dev and torch extras

browser-deps:  ## install Debian's chromium for the browser test if missing (needs root + apt-get; never fails)
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "browser-deps: installing chromium with apt-get"; \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; } || \
	  echo "browser-deps: could not install chromium (not root, or no package source); the browser test will skip" >&2; \
	fi

test: $(STAMP) browser-deps  ## run the test suite (no slow tests), 8 simulated CPU devices
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile tests

test-slow: $(STAMP)  ## run only the slow tests (multi-process, hard-kill resume, ...)
	$(PY) -m pytest -m slow tests

demo: $(STAMP)  ## the main job end to end on a generated phantom CXRTrek set
	$(PY) -m cxrtrek_jax.demo --out $(DEMO_DIR)

clean:  ## remove build and demo outputs (keeps .venv)
	rm -rf build dist *.egg-info $(DEMO_DIR) .pytest_cache
