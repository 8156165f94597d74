# aigw: `make demo` serves with stand-in backends (no GPU); `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test lint typecheck unit integration clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "aigw needs Python 3.11 or newer"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || \
		{ echo "python3 -m venv failed; on Debian/Ubuntu: sudo apt install python3-venv"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

demo: venv
	@cat etc/aigw/demo-howto.txt
	$(BIN)/aigwd --config etc/aigw/demo.toml

lint: venv
	$(BIN)/ruff check aigwd aigwctl tests

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

integration: venv
	$(BIN)/pytest -q tests/integration

test: venv lint typecheck
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) state build *.egg-info .pytest_cache .mypy_cache .ruff_cache
