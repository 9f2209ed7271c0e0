# Two commands for a fresh clone: `make demo` builds the quickstart dataset and prints the method comparison,
# `make test` runs the tests. `make demo-full` builds the richer demo profile (much longer; README says how long).
# Both create .venv and install what they need; torch 2.13.0 (CPU) goes in first so nothing pulls CUDA wheels.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

CHROMIUM := /usr/bin/chromium

DEMO := data_manifests/quickstart.yaml
DEMO_FULL := data_manifests/demo.yaml

.PHONY: demo demo-full test test-system ui ui-full install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,cluster]"
	touch $(STAMP)

install: $(STAMP)

# gmates sync ends with a one-line summary, the method comparison, the release and how to open the UI.
demo: $(STAMP)
	$(BIN)/gmates sync --manifest $(DEMO)

demo-full: $(STAMP)
	$(BIN)/gmates sync --manifest $(DEMO_FULL)

# The UI test drives Debian's chromium through Playwright (never `playwright install`: no browser downloads).
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The cluster test starts its own Postgres and redis-server on 127.0.0.1 (Debian's packages; never as services).
SERVICES := /usr/bin/redis-server /usr/lib/postgresql/15/bin/postgres
$(SERVICES):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server

# `make test`: the whole suite on 3 xdist workers (2 cores: the multi-minute tests, marker `system`, mostly wait
# on servers, ticks and queues, and start first so the short tests fill the cores they leave). --dist loadgroup:
# tests marked with one xdist_group share a worker (a module fixture built once). `make test-system`: only
# the multi-minute tests (the cluster through Postgres/daemon/Celery, the UI in Chromium, whole-graph smokes).
test: $(STAMP) $(CHROMIUM) $(SERVICES)
	$(BIN)/python -m pytest -q -n 3 --dist loadgroup

test-system: $(STAMP) $(CHROMIUM) $(SERVICES)
	$(BIN)/python -m pytest -q -n 3 --dist loadgroup -m system

ui: $(STAMP)
	$(BIN)/gmates ui --manifest $(DEMO)

ui-full: $(STAMP)
	$(BIN)/gmates ui --manifest $(DEMO_FULL)

clean:
	rm -rf .gmates .dagster_home
