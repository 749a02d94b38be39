# Set-up and entry points. Every target creates and uses the virtual environment .venv at the
# repository root; the first run installs the CPU build of torch and this package with its
# test extras (compiling its C extension), later runs reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= out

.PHONY: demo test e2e bench

# The C extension is compiled by the install: a change to its source reinstalls.
$(STAMP): setup.py verl_confprofile/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(OUT)
	$(BIN)/confprofile demo --out $(OUT)/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Only the end-to-end tests: verl's SFT and GRPO trainers on CPU (tests/e2e, a few minutes).
e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e

bench: $(STAMP)
	for script in benchmarks/[!_]*.py; do $(BIN)/python $$script || exit 1; done
