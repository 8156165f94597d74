# aigw: `make demo` serves with stand-in backends (no GPU); `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test lint typecheck unit integration clean bench bench-smoke soak

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

# 10 minutes of mixed load against the real daemon (make test runs a 20 s version).
soak: venv
	AIGW_SOAK_S=600 $(BIN)/pytest -q -s tests/soak

# Benchmarks against the direct path, nginx, a bare aiohttp proxy and LiteLLM; writes bench/RESULTS.md.
# A subset: make bench ARGS="--only latency,throughput --seconds 5" (see: $(BIN)/python -m bench --help)
bench: venv
	$(BIN)/python -m bench $(ARGS)

bench-smoke: venv
	$(BIN)/python -m bench --smoke $(ARGS)

.PHONY: deb deb-lint deb-requirements

# build/aigw_<version>_<arch>.deb: a virtual environment in /opt/aigw from packaging/deb/requirements.txt,
# the systemd unit, sysusers and tmpfiles entries. Needs debhelper, dpkg-dev and python3-venv (.ci/run).
deb:
	packaging/deb/build-deb

deb-lint: deb
	lintian --pedantic --info --show-overrides build/aigw_*.deb

# Pin (with hashes) what the .deb installs, after a change to the dependencies in pyproject.toml.
deb-requirements:
	$(PYTHON) -m venv build/pip-tools
	build/pip-tools/bin/pip install --quiet pip-tools
	CUSTOM_COMPILE_COMMAND="make deb-requirements" build/pip-tools/bin/pip-compile --quiet --generate-hashes \
		--strip-extras --no-emit-index-url --no-emit-find-links --output-file packaging/deb/requirements.txt \
		pyproject.toml
	CUSTOM_COMPILE_COMMAND="make deb-requirements" build/pip-tools/bin/pip-compile --quiet --generate-hashes \
		--strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
		--output-file packaging/deb/build-requirements.txt packaging/deb/build-requirements.in

clean:
	rm -rf $(VENV) state build *.egg-info .pytest_cache .mypy_cache .ruff_cache
