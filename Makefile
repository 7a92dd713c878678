# The README's two commands: `make demo` (install + default job) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/digits

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: install
	$(PY) train.py --config configs/digits_edm.py --workdir $(WORKDIR)
	$(PY) sample.py --workdir $(WORKDIR)

test: install
	$(PY) -m pytest -q -n 2 tests

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
