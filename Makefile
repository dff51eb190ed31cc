# Makefile for the aggregator daemon.
#
#   make            list targets
#   make run        install into .venv and start the daemon (ARGS="--port 9000")
#   make test       install test extras + Debian test dependencies, lint, type-check, pytest
#
# Works on a fresh Debian 12 with only python3.11, python3-venv and make.

SHELL := /bin/sh
.DEFAULT_GOAL := help

# First interpreter of python3.11, python3 that actually runs (pyenv shims may
# exist for versions that are not installed).  Override: make PYTHON=/path/to/python
ifeq ($(origin PYTHON),undefined)
PYTHON := $(or $(shell for p in python3.11 python3; do \
	"$$p" -c '' >/dev/null 2>&1 && { command -v "$$p"; break; }; done),python3)
endif

VENV        ?= .venv
VENV_BIN    := $(VENV)/bin
VENV_PY     := $(VENV_BIN)/python
STAMP       := $(VENV)/.installed
STAMP_TEST  := $(VENV)/.installed-test

# Extra arguments: make run ARGS="--port 9000", make test PYTEST_ARGS="-k imap -x"
ARGS        ?=
PYTEST_ARGS ?=
BENCH_ARGS  ?=

LINT_PATHS  ?= aggregator channels tests bench

# Debian packages the test-suite needs, as package:command.  The package is
# installed when the command is not found.  Add one word per new dependency.
DEB_PACKAGES ?= \
	redis-server:redis-server \
	dovecot-imapd:dovecot

# Daemons such as dovecot live in sbin, which is not on a regular user's PATH on Debian.
export PATH := $(PATH):/usr/local/sbin:/usr/sbin:/sbin
export DEBIAN_FRONTEND := noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: help venv install install-test system-deps run test lint ruff mypy pytest bench clean

help: ## List targets
	@echo "Usage: make <target> [VAR=value ...]"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Variables: PYTHON=$(PYTHON) VENV=$(VENV) ARGS= PYTEST_ARGS= BENCH_ARGS="
	@echo "           DEB_PACKAGES=$(strip $(DEB_PACKAGES))"

# --- virtualenv -------------------------------------------------------------

# Created only when missing (or broken: the python symlink dangles).
$(VENV_PY):
	@command -v "$(PYTHON)" >/dev/null 2>&1 || { \
		echo "error: '$(PYTHON)' not found; Python >= 3.11 is required (set PYTHON=...)" >&2; exit 1; }
	@"$(PYTHON)" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || { \
		echo "error: Python >= 3.11 is required, but $(PYTHON) is $$("$(PYTHON)" --version 2>&1)" >&2; \
		echo "       install python3.11 or run: make PYTHON=/path/to/python3.11" >&2; exit 1; }
	rm -rf "$(VENV)"
	"$(PYTHON)" -m venv "$(VENV)"

# Re-installed only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml | $(VENV_PY)
	"$(VENV_PY)" -m pip install --quiet --upgrade pip
	"$(VENV_PY)" -m pip install -e .
	@touch "$@"

$(STAMP_TEST): pyproject.toml | $(VENV_PY)
	"$(VENV_PY)" -m pip install --quiet --upgrade pip
	"$(VENV_PY)" -m pip install -e '.[test]'
	@touch "$@" "$(STAMP)"

venv: $(STAMP) ## Create .venv (if missing) and install the package
install: $(STAMP) ## Same as venv
install-test: $(STAMP_TEST) ## Install the package with the [test] extras

# --- Debian packages for the tests --------------------------------------------

system-deps: ## Install missing Debian packages listed in DEB_PACKAGES (apt-get)
	@missing=; \
	for pair in $(DEB_PACKAGES); do \
		pkg=$${pair%%:*}; cmd=$${pair#*:}; \
		command -v "$$cmd" >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "Installing Debian packages:$$missing"; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=; \
	elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	else echo "error: need root or sudo to install:$$missing" >&2; exit 1; fi; \
	command -v apt-get >/dev/null 2>&1 || { \
		echo "error: apt-get not found; install manually:$$missing" >&2; exit 1; }; \
	set -e; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	for pair in $(DEB_PACKAGES); do \
		cmd=$${pair#*:}; \
		command -v "$$cmd" >/dev/null 2>&1 || { \
			echo "error: '$$cmd' still not found after installing $${pair%%:*}" >&2; exit 1; }; \
	done

# --- run ----------------------------------------------------------------------

run: $(STAMP) ## Start the daemon: .venv/bin/aggregator serve [ARGS="--port 9000"]
	exec "$(VENV_BIN)/aggregator" serve $(ARGS)

# --- checks -------------------------------------------------------------------

ruff: $(STAMP_TEST) ## ruff check only
	"$(VENV_BIN)/ruff" check $(LINT_PATHS)

mypy: $(STAMP_TEST) ## mypy only
	"$(VENV_BIN)/mypy"

pytest: $(STAMP_TEST) system-deps ## pytest only [PYTEST_ARGS=...]
	"$(VENV_PY)" -m pytest $(PYTEST_ARGS)

lint: $(STAMP_TEST) ## ruff check + mypy (config in pyproject.toml)
	"$(VENV_BIN)/ruff" check $(LINT_PATHS)
	"$(VENV_BIN)/mypy"

test: $(STAMP_TEST) system-deps ## Install test deps (pip + apt), then ruff, mypy, pytest [PYTEST_ARGS=...]
	"$(VENV_BIN)/ruff" check $(LINT_PATHS)
	"$(VENV_BIN)/mypy"
	"$(VENV_PY)" -m pytest $(PYTEST_ARGS)

bench: $(STAMP) ## Run benchmarks: python -m bench, else bench/run.py [BENCH_ARGS=...]
	@if [ -f bench/__main__.py ]; then \
		echo "$(VENV_PY) -m bench $(BENCH_ARGS)"; exec "$(VENV_PY)" -m bench $(BENCH_ARGS); \
	else \
		echo "$(VENV_PY) bench/run.py $(BENCH_ARGS)"; exec "$(VENV_PY)" bench/run.py $(BENCH_ARGS); \
	fi

# --- clean --------------------------------------------------------------------

clean: ## Remove .venv and caches (never the data directory)
	rm -rf "$(VENV)" .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
