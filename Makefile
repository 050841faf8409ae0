# Two commands do all the set-up on a fresh machine:
#   make run    creates .venv, installs, runs the whole pipeline on the embedded default (digits)
#   make test   creates .venv, installs, runs every test
# Installing is idempotent: a stamp file records what was installed, so a second call reinstalls nothing.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.10 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.ganpipe-run
DEV_STAMP := $(VENV)/.ganpipe-dev

# Telemetry has nowhere to go.
export RAY_USAGE_STATS_ENABLED := 0
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# pip byte-compiles what it installs one file at a time (about 110 s here); without it every Ray worker
# compiles on import, several at once (worse). So: install with --no-compile, then compile on every core,
# skipping the dependencies' own test folders (never imported). A file that does not compile (some
# packages ship fixtures that are not Python 3) is compiled on import if ever imported, hence the "|| true".
COMPILE = $(PY) -m compileall -qq -j 0 -x '/tests?/' $(VENV)/lib >/dev/null 2>&1 || true

.PHONY: run test test-fast demo bench clean help

help:
	@echo "make run    set up .venv and run the whole pipeline on the embedded default (digits)"
	@echo "make test   set up .venv and run every test (the fast layer first)"
	@echo "make test-fast  unit + architecture tests only (under 3 minutes): the inner loop"
	@echo "make bench  run the benchmarks (CPU, under 15 minutes) and write benchmarks/RESULTS.md"
	@echo "make demo   the GAN engine alone on digits (no Ray, Prefect or MLflow), pictures in runs/digits"

# what the pipeline needs
$(RUN_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e .
	$(COMPILE)
	@touch $@

# and what the tests need (moto's S3 server, onnxruntime, pytest)
$(DEV_STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e ".[dev]"
	$(COMPILE)
	@touch $@

# the whole pipeline on the embedded default: local Ray, Prefect's temporary server, MLflow on SQLite,
# everything under GANPIPE_HOME (default ~/.ganpipe)
run: $(RUN_STAMP)
	$(VENV)/bin/ganpipe run --preset digits

demo: $(RUN_STAMP)
	$(PY) -m gan_core --preset digits --out runs/digits

# testpaths in pyproject.toml order the layers: architecture and unit (seconds) before integration
test: $(DEV_STAMP)
	$(PY) -m pytest -q

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q tests/architecture tests/unit

bench: $(DEV_STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
