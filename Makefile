# The README's two commands: `make demo` (set up + main job on the embedded default) and
# `make test` (the test suite, as CI runs it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.numaplan-installed

# The QEMU multi-node tier (tests/qemu, issue 7) is opt-in until it fits the CI budget:
# `make test NUMAPLAN_QEMU=1` runs it (after `scripts/numa-vm setup`).
NUMAPLAN_QEMU ?= 0
export NUMAPLAN_QEMU

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,highs,plot]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python examples/demo.py

lint: setup
	$(BIN)/ruff check numaplan tests examples scripts

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
