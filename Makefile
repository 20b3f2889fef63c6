# propensity: the two commands a newcomer needs are `make demo` and `make test`.
# Both create or refresh the virtualenv (.venv) themselves.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV = $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export PROPENSITY_HOME ?= $(CURDIR)/var

DEMO_CUSTOMERS ?= 20000
DEMO_DAYS ?= 730
DEMO_START ?= 2024-01-01
DEMO_END ?= $(shell $(PYTHON) -c "import datetime as d; print(d.date.fromisoformat('$(DEMO_START)') + d.timedelta(days=$(DEMO_DAYS) - 1))")
PYTEST_ARGS ?=
# pytest-xdist workers (one per core by default; 0 runs the suite in this process). A module runs
# whole on one worker, so its module-scoped fixtures are built once (tests/conftest.py).
TEST_WORKERS ?= auto

.PHONY: venv services test lint demo clean help catalogue up down

help:
	@echo "make demo   - set up and run the main job end to end on embedded defaults"
	@echo "make test   - set up and run the test suite (ruff + pytest)"
	@echo "make up     - start Airflow (api-server, scheduler, dag-processor) and MLflow on 127.0.0.1, no Docker"
	@echo "make down   - stop what make up started"

# --compile-bytecode: uv leaves .pyc to the first import, and with PYTHONDONTWRITEBYTECODE set
# (as on our CI machines) every process would compile mlflow, GX and Airflow from source again: 2-3x their
# import time, paid by every command, Airflow task and test subprocess.
$(STAMP): requirements.txt pyproject.toml
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q uv
	@test -x $(BIN)/python || $(UV) venv -q -p 3.11 $(VENV)
	$(UV) pip install -q -p $(BIN)/python --compile-bytecode -r requirements.txt
	$(UV) pip install -q -p $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 src dags plugins
	@touch $(STAMP)

venv: $(STAMP)

services:
	@bash scripts/ensure-postgres.sh

lint: venv
	$(BIN)/ruff check .

test: venv services lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

demo: venv
	$(BIN)/propensity simulate --customers $(DEMO_CUSTOMERS) --days $(DEMO_DAYS) --start $(DEMO_START)
	$(BIN)/propensity run --start $(DEMO_START) --end $(DEMO_END) --through audiences --report $(PROPENSITY_HOME)/train_report.json
	@echo ""
	@echo "exports:   $(PROPENSITY_HOME)/exports/dt=*/ (one manifest.json per date; audience=*/ CSVs)"
	@echo "lake:      $(PROPENSITY_HOME)/lake (raw, clean, features, scores, audiences, reports)"
	@echo "MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(PROPENSITY_HOME)/mlflow.db --host 127.0.0.1  (or: make up)"

up: venv
	$(BIN)/python -m propensity.stack up $(STACK_ARGS)

down:
	$(BIN)/python -m propensity.stack down

clean:
	rm -rf var

catalogue: venv
	$(BIN)/python -c "import re, pathlib; from propensity.features.catalogue import markdown_table as t; p = pathlib.Path('README.md'); s = p.read_text(); p.write_text(re.sub(r'(<!-- catalogue:start -->\n).*?(\n<!-- catalogue:end -->)', lambda m: m.group(1) + t() + m.group(2), s, flags=re.S))"
