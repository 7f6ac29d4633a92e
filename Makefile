# DNet: the two README commands are `make demo` and `make test`.
# Each installs what is missing first (scripts/setup.sh) and is idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := help

DNET_CACHE ?= $(HOME)/.cache/dnet
DNET_VENV ?= $(DNET_CACHE)/venv
export DNET_CACHE DNET_VENV
# make demo DNET_LAYOUT=direct: units without a broker (computation-unit serve).
DNET_LAYOUT ?= broker
export DNET_LAYOUT
# tch (computation unit) builds against the venv's PyTorch, which must be 2.11.0.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(DNET_VENV)/bin:$(HOME)/.cargo/bin:$(PATH)
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
export DNET_BIN_DIR := $(TARGET_DIR)/release
# make fuzz-long FUZZ_SECONDS=600 FUZZ_TARGET=pickle (no FUZZ_TARGET: every target).
FUZZ_SECONDS ?= 600
FUZZ_TARGET ?=
# make images IMAGES_MODE=host: the offline path even where a registry answers.
IMAGES_MODE ?=

.PHONY: help setup build images images-cuda test test-images demo demo-trained bench bench-trained bench-link chaos soak fuzz-long

help:
	@echo "make demo   run a local cascade (starts RabbitMQ if needed; DNET_LAYOUT=direct: no broker)"
	@echo "make demo-trained  early exit on real data: trains the demo model on scikit-learn's digits if missing (12-15 min on 2 cores), calibrates, runs the test set through the cascade"
	@echo "make test   fmt, clippy, unit and integration tests (real RabbitMQ, never restarted), fuzz, chaos"
	@echo "make build  release binaries into $(DNET_BIN_DIR)"
	@echo "make images  the Docker images the examples use (offline from the host's build where no registry answers; IMAGES_MODE=build|host)"
	@echo "make images-cuda  the same and dnet/computation-unit:0.1.0-cu130, with CUDA's libraries (about 4 GB)"
	@echo "make test-images  the demo cascade from the images, as the manifests configure them, against the binaries (part of make test)"
	@echo "make bench  measure and rewrite BENCHMARKS.md"
	@echo "make bench-trained  early exit on the trained demo model: the calibrated cascade against exit 16 alone, shadow work, answers at 2x and 3x capacity, live thresholds from three starts and under drift; its BENCHMARKS.md section"
	@echo "make bench-link  the cascade across a shaped slow link (root: network namespaces, tc netem); its BENCHMARKS.md section"
	@echo "make chaos  fault injection under load (a private RabbitMQ node is restarted; nodes of a private three-node cluster are killed, five runs), rewrites RELIABILITY.md"
	@echo "make soak   10 minutes at ~80% load, memory and fds per process, rewrites RELIABILITY.md"
	@echo "make fuzz-long  each fuzz target (or FUZZ_TARGET) for FUZZ_SECONDS (600): runs, crashes, OOMs, coverage; minimises fuzz/corpus"

setup:
	@scripts/setup.sh all

build: setup
	cargo build --release --workspace --bins

images: build
	@scripts/setup.sh docker
	@scripts/dockerd.sh
	@scripts/images.sh $(IMAGES_MODE) --readme

images-cuda: build
	@scripts/setup.sh docker
	@scripts/dockerd.sh
	@scripts/images.sh $(IMAGES_MODE) --cuda

test: setup
	@scripts/test.sh

test-images: build
	@scripts/test_images.sh

demo: build
	@scripts/demo.sh

demo-trained: build
	@scripts/demo_trained.sh

bench: setup
	@scripts/bench.sh

bench-trained: build
	@rm -rf bench-out/trained-runs && scripts/bench_trained.sh bench-out/trained-runs
	@python3 scripts/bench_trained_report.py bench-out/trained-runs > bench-out/trained.md
	@python3 scripts/bench_assemble.py --only trained bench-out
	@echo "[bench] BENCHMARKS.md: section trained rewritten"

bench-link: build
	@scripts/bench_link.sh

chaos: build
	@scripts/reliability.sh chaos
	@scripts/reliability.sh cluster

soak: build
	@scripts/reliability.sh soak

fuzz-long:
	@scripts/setup.sh rust
	@scripts/fuzz.sh --long $(FUZZ_SECONDS) $(FUZZ_TARGET)
