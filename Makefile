# Routing hub: `make run` starts the whole stack, `make test` runs every check.
#
# The stack commands are implemented in ops/stack (python -m ops.stack); this file
# only makes sure the virtual environment exists first. STACK_MODE=auto uses Docker
# Compose when a Docker engine answers and `docker compose` works, and the native
# stack (supervisord) otherwise; force one with STACK_MODE=native or STACK_MODE=compose.
# Tooling targets (setup, backup, restore, ...) live in mk/*.mk, included at the end.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.requirements-installed
STACK_MODE ?= auto
STACK := $(VENV_PY) -m ops.stack --mode $(STACK_MODE)
# make logs SERVICE=orthanc FOLLOW=1 LINES=200
SERVICE ?=
FOLLOW ?=
LINES ?= 100
# make test PYTEST_ARGS="-k compose -x"
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`'s first pass (tests/conftest.py: the `serial` tests run after it, alone)
TEST_WORKERS ?= 2

.PHONY: help venv ohif env run start stop restart status logs lint typecheck audit test test-long

help: ## list the targets
	@echo "Routing hub. Quick start: make run (start everything), make test (all checks)."
	@echo
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sort -u | \
		awk 'BEGIN {FS = ":.*## "} {printf "  make %-18s %s\n", $$1, $$2}'

$(VENV_STAMP): requirements.txt requirements-dev.txt
	@if [ ! -x $(VENV_PY) ]; then \
		echo "Creating the virtual environment in $(VENV)"; \
		$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
			rm -rf $(VENV); \
			if [ "$$(id -u)" -eq 0 ]; then bash stack/native/install-debian-packages.sh python3-venv; \
			else echo "python3 -m venv failed: install python3-venv (sudo apt-get install python3-venv)" >&2; exit 1; fi; \
			$(PYTHON) -m venv $(VENV); }; \
	fi
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(VENV_STAMP) ## create or update the Python virtual environment (.venv)

ohif: $(VENV_STAMP) ## install the pinned OHIF viewer into var/ohif if missing (checksum-verified; run does it too)
	@$(VENV_PY) -m ops.stack.ohif

env: $(VENV_STAMP) ## create .env from config/env.defaults with generated passwords, if absent
	@$(STACK) env

run: $(VENV_STAMP) ## install what is missing, create .env if absent, start the stack, wait for health
	@$(STACK) run

start: $(VENV_STAMP) ## start the stack (like run, without installing Debian packages)
	@$(STACK) start

stop: $(VENV_STAMP) ## stop everything `make run` started
	@$(STACK) stop

restart: $(VENV_STAMP) ## stop, then start the stack (applies changes to .env)
	@$(STACK) restart

status: $(VENV_STAMP) ## each service's state and a real health probe (exit code 1 if unhealthy)
	@$(STACK) status

logs: $(VENV_STAMP) ## show the logs (SERVICE=postgres|orthanc|worker|api|app|viewer, FOLLOW=1, LINES=N)
	@$(STACK) logs -n $(LINES) $(if $(FOLLOW),--follow) $(SERVICE)

lint: $(VENV_STAMP) ## ruff on the whole project
	$(VENV)/bin/ruff check .

typecheck: $(VENV_STAMP) ## mypy (mypy.ini): core, worker, ops, app and testkit must type-check
	$(VENV)/bin/mypy --config-file mypy.ini

audit: $(VENV_STAMP) ## pip-audit of requirements.txt; fails on known vulnerabilities that have a fix
	$(VENV_PY) -m ops.tooling.dependency_audit requirements.txt

test: $(VENV_STAMP) ## ruff, mypy, the dependency audit, then the whole pytest suite (unit, integration, browser)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --config-file mypy.ini
	$(VENV_PY) -m ops.tooling.dependency_audit --if-unavailable warn requirements.txt
	@# Both passes run even when the first fails; exit code 5 means PYTEST_ARGS selected no test of a pass.
	@status=0; \
	echo "==> pytest, parallel pass ($(TEST_WORKERS) workers)"; \
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup -m "not long and not serial" $(PYTEST_ARGS) || [ $$? -eq 5 ] || status=1; \
	echo "==> pytest, serial pass (the reliability suite, alone)"; \
	$(VENV)/bin/pytest -m "serial and not long" $(PYTEST_ARGS) || [ $$? -eq 5 ] || status=1; \
	exit $$status

test-long: $(VENV_STAMP) ## the reliability runs longer than 5 minutes (not part of make test or CI)
	$(VENV)/bin/pytest -m long $(PYTEST_ARGS)

# Tooling targets (setup, quick-setup, menu, seed-modalities, backup, restore, rebuild,
# upgrade, clean, reset, uninstall, demo) are defined in mk/*.mk.
-include mk/*.mk
