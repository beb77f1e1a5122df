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

.PHONY: run test check lint clean browser gpu-check test-oldest test-long

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

# Two phases; every part always runs and `make test` fails when any fails.
# 1. The Ray tests in a process of their own, and beside them the fast tier (`make check`'s tests) below Ray's
#    worker priority (nice 19; Ray's workers run at 15): the Ray tests wait on Ray far more than they compute, one
#    of them ends its cluster with `ray stop --force` (every Ray on the machine), and busy processes at a higher
#    priority starve Ray's workers.
# 2. Every other test on two xdist workers (they wait on servers, subprocesses and sleeps as much as they compute).
test: $(DEV_STAMP) browser
	@status=0; log=$$(mktemp); tmp=$$(mktemp -d -t genbench-fast-XXXX); \
	nice -n 19 $(PYTEST) -p no:cacheprovider --basetemp=$$tmp -m "not ray and not integration and not slow" \
	  > $$log 2>&1 & fast=$$!; \
	$(PYTEST) -p no:cacheprovider -m ray || status=$$?; \
	wait $$fast || status=$$?; \
	echo "---- the fast tier, run beside the Ray tests ----"; cat $$log; rm -rf $$log $$tmp; \
	$(PYTEST) -n 2 --dist loadgroup -m "not ray and not long and (integration or slow)" || status=$$?; \
	exit $$status

check: lint
	$(PYTEST) -n 2 -m "not integration and not slow"

# The tests longer than make test's budget by what they test: the tracking server away past MLflow's retries (~8 min).
test-long: $(DEV_STAMP)
	$(PYTEST) -p no:cacheprovider -m long

# genbench at the oldest versions its ranges admit, beside a lab's older torch (scripts/test-oldest; ~6 GB of packages).
test-oldest:
	PYTHON=$(PYTHON) scripts/test-oldest

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
	rm -rf results/mlflow.db results/artifacts results/cache results/checkpoints results/reports  # the user cache stays

# On a CUDA machine: environment, throughput, numerics, the fashion suite and packing (docs/performance.md, "On a GPU").
gpu-check:
	$(PYTHON) scripts/gpu-check
