# The two commands: `make demo` and `make test`. Both create .venv and install the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test soak bench sysdeps clean help

help:
	@echo "make demo   run the whole pipeline on embedded defaults (emulator, simulated inverters, agent)"
	@echo "make test   install what the tests need and run them"
	@echo "make soak   the long reliability runs"
	@echo "make bench  benchmarks, written to bench/results.md"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "Error: could not create a virtualenv. Try: apt-get install -y python3-venv"; exit 1; }
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

sysdeps:
	@scripts/system-deps mosquitto socat

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -m "not soak" $(PYTEST_ARGS)

soak: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -m soak $(PYTEST_ARGS)
	SOLAR_AGENT_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q -m fuzz $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/solar-agent demo

bench: $(STAMP) sysdeps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
