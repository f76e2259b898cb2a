# The two set-up commands from README.md. Each creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: if no torch is present, take the CPU build 2.13.0 when it is available
	# (on this machine a local wheel), otherwise whatever pip chooses for this platform.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0 || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/autoseg demo --workdir autoseg_demo

test: $(STAMP)
	bash scripts/run_tests.sh $(BIN)/python

clean:
	rm -rf $(VENV) autoseg_demo
