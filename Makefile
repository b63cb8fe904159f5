# The two commands of the README: `make demo` and `make test`. Each does all set-up itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the embedded instance of `make demo` / `make ui`; tests get a throw-away one of their own
DEMO_HOME := $(CURDIR)/.dagster_home
export FIB_ASSETS_DATA ?= $(CURDIR)/data

.PHONY: install demo ui test lint typecheck pytest system-deps clean-demo

# torch first, pinned to the CPU wheel that lies on disk here; pyproject declares torch>=2.4 so
# GPU nodes install their own CUDA build instead.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	DAGSTER_HOME=$(DEMO_HOME) $(BIN)/fib-assets demo

ui: install
	mkdir -p $(DEMO_HOME) && cp dagster.yaml $(DEMO_HOME)/dagster.yaml
	DAGSTER_HOME=$(DEMO_HOME) $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# Debian packages the tests need (installed only when missing; apt-get update once first).
DEB_PACKAGES := postgresql chromium
system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install system-deps
	rm -rf test-output/dagster_home && mkdir -p test-output/dagster_home
	DAGSTER_HOME=$(CURDIR)/test-output/dagster_home FIB_ASSETS_DATA=$(CURDIR)/test-output/data \
		$(BIN)/pytest

test: lint typecheck pytest

clean-demo:
	rm -rf .dagster_home data
