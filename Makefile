# Two commands do all the setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo lab test lint docs gallery install system-deps system-deps-test bench clean

# Debian packages: graphviz (the `dot` binary) for everyone; chromium for the browser test.
system-deps:
	@LOG=artifacts/system-deps.log bash scripts/system-deps.sh graphviz

system-deps-test:
	@LOG=artifacts/system-deps.log bash scripts/system-deps.sh graphviz chromium

# The install steps write their output to $(LOG) (its end is printed only when a step fails).
LOG    := artifacts/install.log
QUIET  := bash scripts/quietly.sh $(LOG)

$(STAMP): pyproject.toml
	@mkdir -p artifacts && : > $(LOG)
	@echo "installing notebook_orch and its dependencies into $(VENV) (about a minute; log: $(LOG)) ..."
	@test -x $(BIN)/python || $(QUIET) $(PYTHON) -m venv $(VENV)
	@$(QUIET) $(BIN)/python -m pip install --upgrade pip
	@$(QUIET) $(BIN)/python -m pip install -e ".[test]"
	@$(QUIET) $(BIN)/python -m ipykernel install --sys-prefix --name python3
	@touch $(STAMP)

install: system-deps $(STAMP)

# Ends with a summary: the run's status, its tasks and time, where the HTML and the executed notebook are.
demo: install
	@$(BIN)/python -m notebook_orch.demo

# JupyterLab on the gallery (notebooks/), on this machine only (localhost); Ctrl-C stops it.
lab: install
	$(BIN)/python -m jupyter lab $$([ "$$(id -u)" -eq 0 ] && echo --allow-root) notebooks

# Execute every notebooks/*.ipynb into artifacts/gallery/ (skips the copies that are still fresh).
gallery: install
	$(BIN)/python scripts/gallery.py

# The documentation site in artifacts/site/ (executes the gallery first if it is stale).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

# ruff (configured in pyproject.toml, check only: nothing is reformatted) and mypy on the package.
lint: $(STAMP)
	$(BIN)/python -m ruff check notebook_orch tests benchmarks scripts
	$(BIN)/python -m mypy notebook_orch

# Coverage of the package (config and floor in pyproject.toml [tool.coverage.*]): below the floor
# the run fails. A table of the files under 100% is printed; line by line in artifacts/coverage/html.
COV := --cov=notebook_orch --cov-report=term --cov-report=xml:artifacts/coverage/coverage.xml --cov-report=html:artifacts/coverage/html

test: system-deps-test $(STAMP)
	$(MAKE) --no-print-directory lint
	@$(QUIET) bash scripts/phoenix-venv.sh   # Arize Phoenix in its own venv (the OTLP receiver of tests/test_tracing.py); log: $(LOG)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict
	$(BIN)/python -m pytest -q -p no:cacheprovider $(COV)

bench: install
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) .notebook_orch artifacts
