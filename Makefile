# Set-up is part of every target: a fresh clone needs only `make example` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup example test lint benchmarks docs docs-serve dist

setup: $(VENV)/.installed

# torch first, pinned to the CPU wheel, so that the package's bare `torch`
# requirement is already met and pip does not fetch a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

example: setup
	$(BIN)/python lightning_examples/poisson_2d.py

lint: setup
	$(BIN)/ruff check diffops tests benchmarks lightning_examples

# Two worker processes (pytest-xdist): on the two-core build machine the suite took 9 minutes in one
# process and 5-6 in two.
test: lint
	$(BIN)/python -m pytest -q -n 2

# Prints the performance tables of the README (minutes; folx is compared when jax and folx are installed).
benchmarks: setup
	$(BIN)/python benchmarks/bench_taylor.py --threads 1 --compile
	$(BIN)/python benchmarks/bench_estimators.py
	$(BIN)/python benchmarks/auto_rule.py --threads 1

# The documentation site (docs/, mkdocs.yml) into site/; --strict turns a broken link or reference into an error.
$(VENV)/.docs-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# An sdist and a wheel in dist/, checked as a package index would show them.
$(VENV)/.release-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[release]'
	touch $@

dist: $(VENV)/.release-installed
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*
