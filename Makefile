# Two entry points, each doing all set-up on a fresh Debian machine with python3 (3.11):
#   make demo   — the live demo on the embedded defaults
#   make test   — the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install system-deps demo test clean

# Debian packages the tests start as real processes (Alertmanager, Redis), and the checkers of
# the production stack's configuration (promtool from prometheus, amtool, nginx -t from
# nginx-light: tests/test_compose.py); installed when missing.
APT_PACKAGES := prometheus-alertmanager redis-server curl prometheus nginx-light
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/gatewatch geo install
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/gatewatch demo

test: install system-deps
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .gatewatch
