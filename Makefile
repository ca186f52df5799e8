# dicp-jax: `make train` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXP    ?= darkroom
SPLITS ?=
# More `dicp experiment` flags, e.g. a multi-process run (one `make train` per process):
# ARGS="--coordinator host0:12345 --num-processes 2 --process-id 0" (README, Multi-process runs)
ARGS   ?=

.PHONY: install test test-devices lint bench train clean

install: $(STAMP)

# Reinstall only when the project's declared dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The suite; the checks of several devices or processes against one (each starts
# subprocesses that compile their own programs) are `make test-devices`, also run by CI.
test: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not devices" tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-devices: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m devices tests

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/dicp bench all

train: install
	$(BIN)/dicp experiment $(EXP) --splits "$(SPLITS)" $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
