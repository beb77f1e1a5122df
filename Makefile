# `make run`: set up .venv with genbench alone, run the offline quick suite and write its report.
# `make test`: add the dev and ray extras to .venv (pytest, selenium, prdc, ray), install Chromium when missing,
#   and run every test.
# `make check`: lint and the fast tier (no server, cluster, browser or subprocess suite), for every edit.
# Every install takes its versions from constraints.txt: the exact versions the project's own runs and CI use
# (pyproject.toml states ranges, so genbench installs beside other torch versions).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PIP := $(BIN)/python -m pip install -q -c constraints.txt

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: run test check lint clean browser gpu-check

PYTEST := $(BIN)/python -m pytest -q

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PIP) -e '.[dev,ray]'
	touch $(DEV_STAMP)

run: $(STAMP)
	$(BIN)/bench run --suite quick
	$(BIN)/bench report --suite quick

# Two phases, and both always run: every test but Ray's on two xdist workers (the tests wait on servers,
# subprocesses and sleeps as much as they compute), then the Ray tests in one process of their own: one of them
# ends its cluster with `ray stop --force`, which ends every Ray on the machine, and Ray's workers run at a low
# priority that busy xdist workers starve.
test: $(DEV_STAMP) browser
	@status=0; \
	$(PYTEST) -n 2 --dist loadgroup -m "not ray" || status=$$?; \
	$(PYTEST) -m ray || status=$$?; \
	exit $$status

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

lint: $(DEV_STAMP)
	$(BIN)/ruff check bench baselines tests
	$(BIN)/ruff format --check bench baselines tests

clean:
	rm -rf results/mlflow.db results/artifacts results/cache results/checkpoints results/reports

# On a CUDA machine: environment, throughput, numerics, the fashion suite and packing (docs/performance.md, "On a GPU").
gpu-check:
	$(PYTHON) scripts/gpu-check
