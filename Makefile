# `make run`: set up .venv, run the offline quick suite and write its report.
# `make test`: set up .venv (with the dev extra) and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bench run --suite quick
	$(BIN)/bench report --suite quick

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check bench baselines tests
	$(BIN)/ruff format --check bench baselines tests

clean:
	rm -rf results/mlflow.db results/artifacts results/cache results/checkpoints results/reports
