# The two commands of the README. Each creates .venv when it is missing and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "lightning-vitx needs Python >= 3.10, got " + sys.version'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,all]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/shapes.py

lint: $(STAMP)
	$(PY) -m ruff check lightning_vitx tests examples benchmarks
	$(PY) -m mypy lightning_vitx

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/explainers.py

clean:
	rm -rf $(VENV) outputs build *.egg-info
