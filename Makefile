# Two commands do all the set-up on a fresh machine:
#   make run    creates .venv, installs, runs the whole pipeline on the embedded default (digits)
#   make test   creates .venv, installs, runs every test
# Installing is idempotent: a stamp file records what was installed, so a second call reinstalls nothing.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.10 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ganpipe-installed

# Telemetry has nowhere to go.
export RAY_USAGE_STATS_ENABLED := 0
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test demo bench clean help

help:
	@echo "make run    set up .venv and run the whole pipeline on the embedded default (digits)"
	@echo "make test   set up .venv and run every test"
	@echo "make bench  run the benchmarks (prints ratios)"
	@echo "make demo   the GAN engine alone on digits (no Ray, Prefect or MLflow), pictures in runs/digits"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

# the whole pipeline on the embedded default: local Ray, Prefect's temporary server, MLflow on SQLite,
# everything under GANPIPE_HOME (default ~/.ganpipe)
run: $(STAMP)
	$(VENV)/bin/ganpipe run --preset digits

demo: $(STAMP)
	$(PY) -m gan_core --preset digits --out runs/digits

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
