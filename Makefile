# The README's two commands: `make demo` (install + default job) and `make test` (install + tests).
# The suite runs on the newest stack (Python 3.12: jax 0.12, flax 0.12.12); `make test-py311`
# runs a fast subset on Python 3.11 (jax 0.10), the oldest stack kept working.
PYTHON ?= $(shell PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12 || command -v python3)
PYTHON311 ?= $(shell PYENV_VERSION=3.11.7 pyenv which python3.11 2>/dev/null || command -v python3.11 || command -v python3)
VENV ?= .venv
VENV311 ?= .venv311
PY := $(VENV)/bin/python
PY311 := $(VENV311)/bin/python
WORKDIR ?= runs/digits
FAST_SUBSET := tests/test_layout.py tests/test_processes.py tests/test_denoisers.py \
	tests/test_samplers_identities.py tests/test_recipes.py tests/test_checkpoints.py

.PHONY: install install-test demo test test-py311 lint clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VENV311)/.test: pyproject.toml
	$(PYTHON311) -m venv $(VENV311)
	$(PY311) -m pip install -q --upgrade pip
	$(PY311) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.runtime

install-test: $(VENV)/.test

demo: install
	$(PY) train.py --config configs/digits_edm.py --workdir $(WORKDIR)
	$(PY) sample.py --workdir $(WORKDIR)

test: install-test
	$(PY) -m pytest -q -n 2 tests

test-py311: $(VENV311)/.test
	$(PY311) -m pytest -q -n 2 $(FAST_SUBSET)

lint: install-test
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) $(VENV311) runs .pytest_cache
