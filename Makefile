# Two commands matter: `make run` starts a hub, `make test` proves it works.
# Both create the virtual environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= .freight-data
LISTEN ?= 127.0.0.1:8443

.PHONY: run test lint typecheck unit integration bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/freight hub --data $(DATA) --listen $(LISTEN)

lint: $(STAMP)
	$(BIN)/ruff format --check freight tests bench
	$(BIN)/ruff check freight tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

test: lint typecheck $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests

bench: $(STAMP)
	bash bench/bench.sh $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
