# Two commands do all the setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install system-deps system-deps-test bench clean

# Debian packages: graphviz (the `dot` binary) for everyone; chromium for the browser test.
system-deps:
	@bash scripts/system-deps.sh graphviz

system-deps-test:
	@bash scripts/system-deps.sh graphviz chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: system-deps $(STAMP)

demo: install
	$(BIN)/python -m notebook_orch.demo

test: system-deps-test $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) .notebook_orch artifacts
