# `make run`: set up .venv, run the offline quick suite and write its report.
# `make test`: set up .venv (with the dev extra) and run every test, two at a time (pytest-xdist, one per core).
# `make check`: lint and the fast tier (no server, cluster, browser or subprocess suite), for every edit.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: run test check lint clean browser gpu-check

# One process: with two xdist workers (-n 2 --dist loadgroup --no-loadscope-reorder) the suite ran in about the
# same time (CPU-bound) and a local Ray node was once declared dead under the load.
PYTEST := $(BIN)/python -m pytest -q

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bench run --suite quick
	$(BIN)/bench report --suite quick

test: $(STAMP) browser
	$(PYTEST)

check: lint
	$(PYTEST) -n 2 -m "not integration and not slow"

# The browser tests drive Debian's headless Chromium through its chromedriver; install both when missing.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing Chromium for the browser tests: apt-get install chromium chromium-driver ..."; \
	  $(APT) install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $(APT) update -q >/dev/null 2>&1 && $(APT) install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	  { echo "could not install Chromium: install the chromium and chromium-driver packages, then make test"; exit 1; }; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check bench baselines tests
	$(BIN)/ruff format --check bench baselines tests

clean:
	rm -rf results/mlflow.db results/artifacts results/cache results/checkpoints results/reports

# On a CUDA machine: environment, throughput, numerics, the fashion suite and packing (README, "On a GPU").
gpu-check:
	$(PYTHON) scripts/gpu-check
