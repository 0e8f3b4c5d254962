# fconv-ext: one entry point.  `make demo` / `make test` set everything up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first, from the CPU wheel unless a torch is already installed: a bare "torch"
# requirement would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.fconv-ext-setup

.PHONY: setup lint test test-fast demo demo-risk summarization clean-venv

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	# fairseq compiles C++/Cython against torch: build it in this venv (no build
	# isolation), else pip installs a second, multi-GB torch just for the build
	$(PIP) install -q numpy cython
	$(PY) -c "import sys; sys.exit(sys.version_info < (3, 11))" \
	  && $(PIP) install -q --no-build-isolation "fairseq-fixed>=0.12.3.1" \
	  || $(PIP) install -q --no-build-isolation "fairseq>=0.12.2"
	$(PIP) install -q --no-build-isolation -e ".[test]"
	$(PY) -c "import fconv_plugin, fairseq, torch; print('fconv-ext ready: fairseq', fairseq.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

# ruff (configured in pyproject.toml): lint, and the formatting ruff format would give
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup
	$(PY) -m pytest -q tests

# the unit tests (tests/unit: fast, no fairseq CLI runs); `make test` runs tests/integration too
test-fast: setup
	$(PY) -m pytest -q tests/unit

clean-venv:
	rm -rf $(VENV)

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/gettext/demo.sh

# After `make demo`: fine-tune its model with sequence_risk (sequence-level training) and score it.
demo-risk: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/gettext/demo_risk.sh

# The paper's second task: headline generation on Debian package descriptions (no download).
summarization: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/summarization/run.sh
