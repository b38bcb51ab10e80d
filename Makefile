# Two commands do all the set-up on a fresh Debian machine with Python 3.11:
#   make demo   the main job end to end on embedded defaults
#   make test   the whole test suite against real peers
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast venv system services lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -e '.[lab,test]'
	touch $(STAMP)

venv: $(STAMP)

system:
	bash deploy/scripts/ensure-system.sh

services:
	bash deploy/scripts/ensure-system.sh test
	bash deploy/scripts/ensure-services.sh

demo: system venv
	$(VENV)/bin/ribnode demo

test: services venv
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# the developer's loop: everything but tests/e2e/ (spawned processes, Orthanc, a browser) and
# the tests marked slow (training, the shipped weights through the whole pipeline), on 4
# pytest-xdist workers: the subset mostly waits on real brokers and listeners
test-fast: services venv
	$(PY) -m pytest -p no:cacheprovider -q -n 4 -m "not e2e and not slow" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m mypy src/ribnode src/ribnode_lab

clean:
	rm -rf var demo-output .pytest_cache
