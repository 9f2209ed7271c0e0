# Two commands for a fresh clone: `make demo` builds the demo dataset, `make test` runs the tests.
# Both create .venv and install what they need; torch 2.13.0 (CPU) goes in first so nothing pulls CUDA wheels.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

CHROMIUM := /usr/bin/chromium

.PHONY: demo test ui install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,cluster]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gmates sync --manifest data_manifests/demo.yaml
	$(BIN)/gmates status --manifest data_manifests/demo.yaml

# The UI test drives Debian's chromium through Playwright (never `playwright install`: no browser downloads).
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q

ui: $(STAMP)
	$(BIN)/gmates ui --manifest data_manifests/demo.yaml

clean:
	rm -rf .gmates .dagster_home
