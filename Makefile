# Setup is two commands on a fresh machine with only Python: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# A plain `torch` requirement pulls a multi-GB CUDA build; the CPU wheel is pinned here, overridable.
TORCH_SPEC ?= torch==2.13.0
ANCHORS ?= ../shared/anchors
ANCHORS_VENV ?= .venv-anchors
BIN := $(VENV)/bin

.PHONY: serve test lint bench clean

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

test: lint
	$(BIN)/python -m pytest

# The anchors' own environment (learn2learn, higher, TorchOpt), built by their setup script.
$(ANCHORS_VENV)/bin/python:
	bash $(ANCHORS)/setup.sh $(abspath $(ANCHORS_VENV))

bench: $(BIN)/.installed $(ANCHORS_VENV)/bin/python
	PYTHONPATH=. $(ANCHORS_VENV)/bin/python bench/maml.py --anchors $(ANCHORS)/bench_maml.py

clean:
	rm -rf $(VENV) $(ANCHORS_VENV) .pytest_cache .mypy_cache .ruff_cache
