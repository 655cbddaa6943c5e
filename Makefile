# Setup is two commands on a fresh machine with only Python: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# A plain `torch` requirement pulls a multi-GB CUDA build, so torch is pinned here, overridable. On these
# machines torch==2.13.0 is a CPU wheel on local disk; elsewhere PyPI's is the CUDA build, and
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu gives the CPU one (docs/quickstart.md).
TORCH_SPEC ?= torch==2.13.0
ANCHORS ?= ../shared/anchors
ANCHORS_VENV ?= .venv-anchors
BIN := $(VENV)/bin

.PHONY: serve test lint docs postgres chromium bench bench-serve clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

serve: $(BIN)/.installed
	METASERVE_DATA_DIR=./data $(BIN)/metaserve serve

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check app tests bench alembic
	$(BIN)/ruff format --check app tests bench alembic
	$(BIN)/mypy

# docs/configuration.md is written from the Settings class; tests/test_docs.py fails while it is stale.
docs: $(BIN)/.installed
	$(BIN)/python -m app.config_reference > docs/configuration.md

# The PostgreSQL tests start a throwaway server of their own: PostgreSQL (Debian's package) is installed when
# initdb is missing. This never fails the build: without PostgreSQL those tests skip, saying so.
postgres:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi; \
	echo "*** PostgreSQL is not installed: installing it for the PostgreSQL tests (apt-get install postgresql)"; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	command -v apt-get >/dev/null && $$sudo apt-get update -q && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql || \
	echo "*** COULD NOT INSTALL PostgreSQL: the PostgreSQL tests will be SKIPPED (install it and run make test)"

# The dashboard's tests drive a real headless Chromium (Debian's package, at /usr/bin/chromium) through
# Playwright, which never downloads a browser of its own. This never fails the build: without Chromium those
# tests skip, saying so.
chromium:
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	echo "*** Chromium is not installed: installing it for the dashboard tests (apt-get install chromium)"; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	command -v apt-get >/dev/null && $$sudo apt-get update -q && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || \
	echo "*** COULD NOT INSTALL Chromium: the dashboard tests will be SKIPPED (install it and run make test)"

test: lint postgres chromium
	$(BIN)/python -m pytest

# The anchors' own environment (learn2learn, higher, TorchOpt), built by their setup script.
$(ANCHORS_VENV)/bin/python:
	bash $(ANCHORS)/setup.sh $(abspath $(ANCHORS_VENV))

bench: $(BIN)/.installed $(ANCHORS_VENV)/bin/python
	PYTHONPATH=. $(ANCHORS_VENV)/bin/python bench/maml.py --anchors $(ANCHORS)/bench_maml.py

# Serving benchmarks (bench/README.md): engine batching, the service under wrk (Debian's package, installed
# when missing), session memory; results in bench/results/.
bench-serve: $(BIN)/.installed-dev
	@command -v wrk >/dev/null || $$([ "$$(id -u)" = 0 ] || echo sudo) apt-get install -y -q wrk
	$(BIN)/python bench/batched.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/resident.py

clean:
	rm -rf $(VENV) $(ANCHORS_VENV) .pytest_cache .mypy_cache .ruff_cache
