# The two commands: `make demo` and `make test`. Both create .venv and install the project into it.
# For gateways: `make deb` (the Debian package) and `make system-test` (it, under a real systemd).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# The booted Debian 12 with systemd as PID 1 that `make system-test` runs in (see its header).
SYSTEMD_BOX ?= ../shared/tools/systemd-box

.PHONY: demo test soak bench sysdeps clean help deb system-test

help:
	@echo "make demo   run the whole pipeline on embedded defaults (emulator, simulated inverters, agent)"
	@echo "make test   install what the tests need and run them"
	@echo "make soak   the long reliability runs"
	@echo "make bench  benchmarks, written to bench/results.md"
	@echo "make deb    the Debian package for this machine's architecture: solar-agent_<version>_<arch>.deb"
	@echo "make system-test  build, install and prove the package under a real systemd ($(SYSTEMD_BOX), root)"

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
	@scripts/system-deps mosquitto || echo "make demo: mosquitto could not be installed; the demo runs without its MQTT feeds"
	$(BIN)/solar-agent demo

bench: $(STAMP) sysdeps
	$(BIN)/python -m bench

# Debian's own tools only (dpkg-deb); DEB_VERSION=... overrides the version from pyproject.toml.
deb:
	packaging/build-deb

# Commit first: the box runs on a fresh clone of HEAD.
system-test:
	@test -x $(SYSTEMD_BOX) || { echo "Error: $(SYSTEMD_BOX) not found"; \
	  echo "Try: make system-test SYSTEMD_BOX=/path/to/systemd-box (it boots Debian 12 with systemd; needs root)"; exit 2; }
	SYSTEMD_BOX_TIMEOUT=$${SYSTEMD_BOX_TIMEOUT:-1200} $(SYSTEMD_BOX) "tests/system/run"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info solar-agent_*.deb
