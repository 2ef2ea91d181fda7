# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
LOCAL_DATA_DIR ?= .local-data
FRESH ?=
DEMO_HISTORY_DAYS ?= 30
STAMP := $(VENV)/.installed

STAGE ?= dev
PACKAGE_DIR := build/package-$(STAGE)

.PHONY: install run test lint typecheck unit package cfn-lint clean bench

# --no-compile: Python compiles the modules it imports when it first imports them, instead of pip
# compiling every module of every package at install (half the install's time). For that, and so
# that the suite's many processes (workers, local stacks, CLI runs) reuse what was compiled, Python
# may write bytecode here whatever the environment says (PYTHONDONTWRITEBYTECODE made every process
# compile its imports again: 9 s for each worker's collection instead of 2.5 s).
unexport PYTHONDONTWRITEBYTECODE
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip<26.3"  # chalice requires pip<26.3
	$(BIN)/pip install --quiet --no-compile -r requirements-dev.txt -e .  # -e .: the operator command, usage-metering
	touch $(STAMP)

install: $(STAMP)

# The tables are kept in LOCAL_DATA_DIR across restarts; FRESH=1 starts empty (the old
# snapshot is kept one step back). The emulated AWS is served on PORT + 1 (AWS_PORT).
# A first (or FRESH) start loads DEMO_HISTORY_DAYS days of demo usage (0: none).
run: $(STAMP)
	PORT=$(PORT) LOCAL_DATA_DIR="$(LOCAL_DATA_DIR)" FRESH="$(FRESH)" DEMO_HISTORY_DAYS="$(DEMO_HISTORY_DAYS)" \
		exec $(BIN)/python -m chalicelib.local.stack

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite runs on TEST_WORKERS processes (pytest-xdist); a module's tests stay on one worker,
# so a module-scoped local stack starts once.
# The checks run side by side first (mypy and the packaging behind cfn-lint each take a core).
# --no-loadscope-reorder keeps tests/conftest.py's order (longest modules first); xdist's own order
# (most tests first) started the one-test soak last, on its own.
TEST_WORKERS ?= 2
test: $(STAMP)
	@$(MAKE) --no-print-directory -j4 --output-sync=target lint typecheck cfn-lint browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15

# The dashboard's browser tests drive Debian's chromium with playwright (PyPI; no browser download).
# As root with apt-get it is installed when missing; elsewhere the tests are skipped with a loud
# warning, and under CI (CI set) a chromium that cannot be had fails the run instead.
CHROMIUM := /usr/bin/chromium
.PHONY: browser
browser:
	@if [ -x $(CHROMIUM) ]; then \
		echo "browser: $$($(CHROMIUM) --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "browser: installing Debian's chromium for the dashboard's browser tests (apt-get)..."; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "!!! WARNING: apt-get could not install chromium: the dashboard's browser tests will be SKIPPED !!!"; \
	else \
		echo "!!! WARNING: $(CHROMIUM) is missing and apt-get is not usable here (not root?): the dashboard's"; \
		echo "!!! browser tests will be SKIPPED. Install Debian's chromium (sudo apt-get install chromium) to run them."; \
	fi
	@if [ -n "$$CI" ] && [ ! -x $(CHROMIUM) ]; then echo "CI: no $(CHROMIUM), refusing to skip the browser tests"; exit 1; fi

# The CloudFormation (SAM) template and Lambda package for a stage: chalice package
# merged with the tables, queues, event-source settings and IAM policy built from the schema.
package: $(STAMP)
	rm -rf $(PACKAGE_DIR) && mkdir -p build
	$(BIN)/python -m tools.deploy_template --stage $(STAGE) > build/merge-$(STAGE).json
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} METERING_STAGE=$(STAGE) METERING_USAGE_QUEUE=metering-usage-$(STAGE) \
		$(BIN)/chalice package --stage $(STAGE) --merge-template build/merge-$(STAGE).json $(PACKAGE_DIR)
	$(BIN)/python -m tools.package $(PACKAGE_DIR)
	@echo "packaged: $(PACKAGE_DIR)/sam.json and $(PACKAGE_DIR)/deployment.zip"

cfn-lint: package
	$(BIN)/cfn-lint $(PACKAGE_DIR)/sam.json

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

bench: $(STAMP)
	$(BIN)/python -m tools.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
