# DNet: the two README commands are `make demo` and `make test`.
# Each installs what is missing first (scripts/setup.sh) and is idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := help

DNET_CACHE ?= $(HOME)/.cache/dnet
DNET_VENV ?= $(DNET_CACHE)/venv
export DNET_CACHE DNET_VENV
# tch (computation unit) builds against the venv's PyTorch, which must be 2.11.0.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(DNET_VENV)/bin:$(HOME)/.cargo/bin:$(PATH)
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
export DNET_BIN_DIR := $(TARGET_DIR)/release

.PHONY: help setup build test demo bench

help:
	@echo "make demo   run a local cascade (starts RabbitMQ if needed)"
	@echo "make test   fmt, clippy, unit and integration tests (real RabbitMQ)"
	@echo "make build  release binaries into $(DNET_BIN_DIR)"
	@echo "make bench  measure and rewrite BENCHMARKS.md"

setup:
	@scripts/setup.sh all

build: setup
	cargo build --release --workspace --bins

test: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace
	$(DNET_VENV)/bin/python tests/deploy/check_deploy.py

demo: build
	@scripts/demo.sh

bench: setup
	@scripts/bench.sh
