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

.PHONY: help setup build test demo bench chaos soak

help:
	@echo "make demo   run a local cascade (starts RabbitMQ if needed)"
	@echo "make test   fmt, clippy, unit and integration tests (real RabbitMQ)"
	@echo "make build  release binaries into $(DNET_BIN_DIR)"
	@echo "make bench  measure and rewrite BENCHMARKS.md"
	@echo "make chaos  fault injection under load (restarts the local RabbitMQ), rewrites RELIABILITY.md"
	@echo "make soak   10 minutes at ~80% load, memory and fds per process, rewrites RELIABILITY.md"

setup:
	@scripts/setup.sh all

build: setup
	cargo build --release --workspace --bins

test: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace
	$(DNET_VENV)/bin/python tests/deploy/check_deploy.py
	scripts/fuzz.sh 10
	cargo build --release --workspace --bins
	$(DNET_BIN_DIR)/chaos --bin-dir $(DNET_BIN_DIR) --seconds 8

demo: build
	@scripts/demo.sh

bench: setup
	@scripts/bench.sh

chaos: build
	@scripts/reliability.sh chaos

soak: build
	@scripts/reliability.sh soak
