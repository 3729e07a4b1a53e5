# relay — the two commands from a fresh clone:
#   make run    set everything up and run relay's main job on embedded defaults
#   make test   set everything up and run the whole test suite (both fastparse builds)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all install build test lint typecheck pytest pytest-py bench clean

all: test

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel "Cython>=3.0.10"
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Compile relay/_fastparse.pyx in place (cheap when up to date).
build: install
	$(BIN)/python setup.py -q build_ext --inplace

lint: install
	$(BIN)/ruff check relay tests bench
	$(BIN)/ruff format --check relay tests bench

typecheck: install
	$(BIN)/mypy --strict relay

# The suite once with the compiled module (which must load) ...
pytest: build
	RELAY_EXPECT_EXTENSIONS=1 $(BIN)/python -m pytest -q

# ... and once with the pure-Python twin.
pytest-py: build
	RELAY_NO_EXTENSIONS=1 $(BIN)/python -m pytest -q

test: build lint typecheck pytest pytest-py

bench: build
	$(BIN)/python bench/fastparse.py --quick

clean:
	rm -rf build relay/_fastparse.c relay/*.so .pytest_cache .mypy_cache .ruff_cache

run: build
	$(BIN)/relay demo
