# The two commands users type: `make demo` and `make test`. Both bootstrap what they need.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-bench
NET_STAMP := $(VENV)/.apt-net
PROM_STAMP := $(VENV)/.apt-prometheus
BROWSER_STAMP := $(VENV)/.apt-browser

.PHONY: demo demo-proxy test lint typecheck imports unit integration bench deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# `trellis proxy` runs as python -OO -X no_debug_ranges (src/trellis/core/proxy_command.py):
	@# compile its .opt-2.pyc files now (without column tables), so that no sidecar compiles
	@# its modules (and keeps the compiler's memory) when it starts. Best effort: the
	@# stdlib may not be writable.
	$(BIN)/python -OO -X no_debug_ranges -m compileall -f -q -j 0 -o 2 src \
	  "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	  "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" \
	  >/dev/null 2>&1 || true
	touch $@

deps: $(STAMP)

# Debian packages the benchmark needs (nginx as the baseline, wrk as the load generator).
$(APT_STAMP): | $(STAMP)
	@if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then echo "bench needs nginx and wrk: run as root or install them" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null; \
	fi
	touch $@

# Debian packages transparent capture needs (network namespaces, a bridge, iptables, setpriv).
# Without root they are only reported: transparent capture and its tests are then skipped.
$(NET_STAMP): | $(STAMP)
	@if ! command -v ip >/dev/null || ! command -v iptables-restore >/dev/null \
	    || ! command -v setpriv >/dev/null || ! command -v unshare >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables util-linux >/dev/null || exit 1; \
	  else echo "note: transparent capture needs iproute2, iptables and util-linux (and root)" >&2; exit 0; fi; \
	fi; \
	touch $@

# Debian packages the dashboard's browser test needs (headless Chromium and its WebDriver).
# Without root they are only reported: that test is then skipped.
$(BROWSER_STAMP): | $(STAMP)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || exit 1; \
	  else echo "note: the dashboard browser test needs chromium and chromium-driver (and root to install them)" >&2; exit 0; fi; \
	fi; \
	touch $@

# Debian's prometheus: the metrics tests scrape real sidecars with it (skipped without it).
$(PROM_STAMP): | $(STAMP)
	@if ! command -v prometheus >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null || exit 1; \
	  else echo "note: the Prometheus tests need the prometheus package (and root to install it)" >&2; exit 0; fi; \
	fi; \
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration -q

test: lint typecheck imports $(NET_STAMP) $(PROM_STAMP) $(BROWSER_STAMP)
	$(BIN)/pytest -q

# The shop on the mesh, live; DURATION=seconds to stop by itself (else Ctrl-C).
demo: $(STAMP) $(NET_STAMP)
	$(BIN)/python examples/shop/demo.py

# One proxy in front of sample services, from a static bootstrap (no control plane).
demo-proxy: $(STAMP)
	$(BIN)/python examples/proxy_demo.py

bench: $(STAMP) $(APT_STAMP)
	$(BIN)/python bench/proxy_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
