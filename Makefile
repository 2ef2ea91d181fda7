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

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
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
TEST_WORKERS ?= 2
test: lint typecheck cfn-lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope

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
