# dicp-jax: `make train` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXP    ?= darkroom
SPLITS ?=
ARGS   ?=

.PHONY: install test lint bench train clean

install: $(STAMP)

# Reinstall only when the project's declared dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/dicp bench all

train: install
	$(BIN)/dicp experiment $(EXP) --splits "$(SPLITS)" $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
