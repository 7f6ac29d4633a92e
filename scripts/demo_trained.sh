#!/usr/bin/env bash
# `make demo-trained`: early exit on real data. Trains the demo model on
# scikit-learn's digits when it is missing (scripts/trained_model.sh),
# calibrates thresholds for the cascade's exits 8 and 12 to agree with exit 16
# on 99% of the validation set, starts the cascade 8 -> 12 -> 16 with them,
# and runs the test set through it: accuracy, answers by exit, latency.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DNET_BIN_DIR:-target/release}
DEMO=${DNET_CACHE:-$HOME/.cache/dnet}/demo
scripts/trained_model.sh
echo "[demo] calibrating exits 8 and 12 for 99% agreement with exit 16 on the validation set"
"$BIN/test-unit" calibrate --weights "$DEMO/digits.safetensors" --dataset "$DEMO/digits-validation.bin" \
  --target-agreement 0.99 --exits 8,12,16 --write-thresholds "$DEMO/thresholds.txt" --json "$DEMO/calibration.json"
records=$(( $(stat -c %s "$DEMO/digits-test.bin") / 3073 ))
echo "[demo] the test set ($records images) through the cascade 8 -> 12 -> 16 with those thresholds"
export BIN DEMO records
DNET_CASCADE_WEIGHTS="$DEMO/digits.safetensors" DNET_CASCADE_THRESHOLDS_FILE="$DEMO/thresholds.txt" \
  exec scripts/cascade.sh bash -c '"$BIN/test-unit" -a "$FIRST_UNIT" --dataset "$DEMO/digits-test.bin" -n "$records"'
