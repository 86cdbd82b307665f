# Two entry points, each doing all set-up on a fresh Debian machine with python3 (3.11):
#   make demo   — the live demo on the embedded defaults
#   make test   — the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/gatewatch geo install
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/gatewatch demo

test: install
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .gatewatch
