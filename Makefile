# The two commands of the README. Each creates .venv when it is missing and installs what it needs, at the exact
# versions of requirements/lock.txt (CPython 3.11, Linux x86_64: the machines CI runs on). `make lock` moves the
# lock within the ranges of pyproject.toml; `make test-latest` tries the newest versions those ranges allow.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCK := requirements/lock.txt
# Where pip on this machine is capped (torch <= the release that lies on its disk), the lock keeps to the cap.
MACHINE_CONSTRAINTS := $(wildcard /etc/xdg/pip/constraints.txt)
LATEST_VENV ?= .venv-latest
LOCK_PYTHON ?= 3.11

.PHONY: demo test lint bench fixtures lock test-latest clean

define check_python
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "lightning-vitx needs Python >= 3.10, got " + sys.version'
endef

# The lock is complete (every package pinned), so it installs with --no-deps and nothing is resolved at install time.
$(STAMP): $(LOCK) pyproject.toml
	$(check_python)
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; assert v == "$(LOCK_PYTHON)", \
		f"$(LOCK) is for Python $(LOCK_PYTHON), $(PYTHON) is {v}: pass PYTHON=python$(LOCK_PYTHON), or make lock LOCK_PYTHON={v} PYTHON=$(PYTHON) ..."'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/shapes.py

lint: $(STAMP)
	$(PY) -m ruff check lightning_vitx tests examples benchmarks
	$(PY) -m ruff format --check lightning_vitx tests examples benchmarks
	$(PY) -m mypy lightning_vitx

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/explainers.py

# Re-train the tests' three trained models (tests/fixture_training.py: vit, swin, vit_shortcut), side by side on one
# thread each, and rewrite their committed weights and manifests under tests/fixtures/. Needed when
# tests/data/test_fixture_weights.py says the recipe changed.
fixtures: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) tests/fixture_training.py vit --write-fixture & vit=$$!; \
	OMP_NUM_THREADS=1 $(PY) tests/fixture_training.py vit_shortcut --write-fixture & shortcut=$$!; \
	OMP_NUM_THREADS=1 $(PY) tests/fixture_training.py swin --write-fixture && wait $$vit && wait $$shortcut

# Regenerate the lock from pyproject.toml's ranges with the dev and all extras (uv, installed into .venv first).
lock: $(STAMP)
	$(PY) -m pip install --quiet uv
	printf 'setuptools>=77\n' | $(VENV)/bin/uv pip compile pyproject.toml - --extra dev --extra all \
		--python-version $(LOCK_PYTHON) $(addprefix -c ,$(MACHINE_CONSTRAINTS)) --upgrade -o $(LOCK)

# Not run by CI: the newest releases the ranges allow (past this machine's cap: pip config files are ignored), in their
# own venv, then the suite. Tells when the lock can move and what breaks.
test-latest:
	$(check_python)
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	PIP_CONFIG_FILE=/dev/null $(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	PIP_CONFIG_FILE=/dev/null $(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev,all]'
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/versions.txt
	@echo "newest versions: $(LATEST_VENV)/versions.txt; differences from the lock:"
	@diff <(grep -E '^[A-Za-z0-9_.-]+==' $(LOCK) | tr A-Z_ a-z- | sort) \
		<(tr A-Z_ a-z- < $(LATEST_VENV)/versions.txt | sort) | grep '^[<>]' || true
	$(LATEST_VENV)/bin/python -m ruff check lightning_vitx tests examples benchmarks
	$(LATEST_VENV)/bin/python -m mypy lightning_vitx
	$(LATEST_VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) $(LATEST_VENV) outputs build *.egg-info
