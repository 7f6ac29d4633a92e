#!/usr/bin/env bash
# `make demo`: a local cascade 8 -> 12 -> 16 and a few requests from test-unit,
# each answer printed with its exit layer and per-hop times.
set -euo pipefail
BIN=${DNET_BIN_DIR:-target/release}
REQUESTS=${DNET_DEMO_REQUESTS:-8}
cd "$(dirname "$0")/.."
echo "[demo] random weights are untrained: confidences sit near 0.1, so the demo's thresholds"
echo "[demo] for exits 8 and 12 are set inside that range to show answers at every exit."
exec scripts/cascade.sh bash -c "\"$BIN/test-unit\" -a \"\$FIRST_UNIT\" -n $REQUESTS --each --qstatus"
