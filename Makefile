# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create the virtual environment in .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install

install: $(STAMP)

# The spark extra (pyspark) lets the tests compare binning on Spark with DuckDB;
# Spark also needs a Java 17 runtime, which .ci/run installs.
# torch 2.13.0 is installed first and by exact version: that takes the CPU build,
# where an unpinned torch would pull a multi-gigabyte CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,spark]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tgloc demo --workspace workspace

test: $(STAMP)
	$(BIN)/python -m pytest
