# Two set-up commands: `make run` and `make test`. Everything installs into .venv at the repository root.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= collector.yaml

.PHONY: install install-test run validate test lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	$(BIN)/webrtc-observer run --config $(CONFIG)

validate: install
	$(BIN)/webrtc-observer validate --config $(CONFIG)

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) typecheck

# mypy cannot follow setuptools' package-dir mapping (config/ installs as webrtc_observer.config...):
# it checks a tree of links laid out as the installed package.
TYPECHECK := $(VENV)/typecheck
typecheck: install-test
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/webrtc_observer
	for f in webrtc_observer/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/webrtc_observer/; done
	for d in config receiver processors exporters; do ln -s "$(CURDIR)/$$d" $(TYPECHECK)/webrtc_observer/$$d; done
	cd $(TYPECHECK) && MYPYPATH=. $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p webrtc_observer

clean:
	rm -rf $(VENV) .pytest_cache data
