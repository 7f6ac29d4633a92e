#!/usr/bin/env bash
# `make test-images` (part of `make test`): builds the images (`make images`,
# offline where no registry answers) and runs them as the Kubernetes
# examples configure them: crates/dnet-testkit/tests/images/ says what is
# checked. Needs root for Docker; never skips: a machine whose dockerd cannot
# start fails here with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh docker
scripts/dockerd.sh
scripts/images.sh
cargo test --release -p dnet-testkit --test images -- --ignored --nocapture
