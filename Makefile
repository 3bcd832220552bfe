# The README's two commands: `make demo` (the end-to-end demo) and `make test` (lint + tests).
# Each creates .venv on first use and installs what it needs; reruns reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch (from local disk here); an unpinned install pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,sb3,procgen]"
	rm -f $(VENV)/.installed-*
	touch $@

.PHONY: install demo demo-quick test bench
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/policylens demo

# Every step of the demo on a small budget (CI runs it); fails unless the report is written.
demo-quick: $(STAMP)
	rm -rf runs/demo-quick
	$(BIN)/policylens demo --quick --out runs/demo-quick
	test -s runs/demo-quick/analysis/report.html

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src/policylens
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q
