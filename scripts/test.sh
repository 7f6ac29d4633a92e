#!/usr/bin/env bash
# `make test`: formatting, lints, every test suite, deployment checks, fuzzing,
# the images run as deployed, and the chaos suite, against the machine's
# RabbitMQ, which other work shares: this never stops or restarts it (its pid
# is checked before and after; the chaos suite restarts a private node of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DNET_BIN_DIR:-target/release}

broker_pid() { rabbitmqctl status 2>/dev/null | awk '/OS PID:/ {print $3}'; }
before=$(broker_pid)
[ -n "$before" ] || { echo "[test] the machine's RabbitMQ does not answer rabbitmqctl"; exit 1; }

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The agreement test runs on the heads-only demo model (trained once: 1.5 to 4 minutes on 2 cores).
scripts/trained_model.sh --heads-only
cargo test --workspace
"$DNET_VENV/bin/python" tests/deploy/check_deploy.py
scripts/fuzz.sh 10
cargo build --release --workspace --bins
scripts/test_python_client.sh
scripts/test_images.sh
# The cluster scenarios run in make chaos; make test has their short version (tests/cluster.rs).
"$BIN/chaos" --bin-dir "$BIN" --seconds 8 --only faults,overload,flood

after=$(broker_pid)
if [ "$before" != "$after" ]; then
  echo "[test] the machine's RabbitMQ was restarted (pid $before, now ${after:-none}): make test must not do that"
  exit 1
fi
echo "[test] all checks passed; the machine's RabbitMQ kept pid $before"
