# Everything installs into .venv from pyproject.toml; Debian tools (DCMTK, dicom3tools, Chromium) come from
# scripts/install-debian-tools.sh when run as root, the OHIF viewer build from npm (scripts/install-ohif.sh),
# and the tests that need them skip otherwise.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install run test lint bench bench-full clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: install
	$(BIN)/dicomlake serve

test: install
	scripts/install-debian-tools.sh
	scripts/install-ohif.sh
	scripts/install-bigquery-emulator.sh
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: install
	scripts/install-debian-tools.sh --orthanc
	$(BIN)/python -m bench quick

bench-full: install
	scripts/install-debian-tools.sh --orthanc
	$(BIN)/python -m bench full

clean:
	rm -rf $(VENV) dicomlake-data .pytest_cache
