# The two entry points of the README: `make search` and `make test`.
# Each sets up what it needs first (a virtualenv, the CIFAR-10 data), so both
# work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TRIALS ?= 50
ARGS ?=
# Machines without internet build a faithful CIFAR-10 replica from the
# project's shared folder; elsewhere the loader downloads the official archive.
REPLICA := ../shared/data/make_cifar10.py

.PHONY: search test setup data

search: setup data
	$(BIN)/python -m mlp_exp.search --trials $(TRIALS) $(ARGS)

test: setup data
	$(BIN)/python -m pytest $(ARGS)

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

data: setup
	@if [ ! -d data/cifar-10-batches-py ] && [ -f $(REPLICA) ]; then \
		$(BIN)/python $(REPLICA) data/; fi
