#!/usr/bin/env bash
# Run by bench.sh inside scripts/cascade.sh (3 units, exit 8 -> 12 -> 16):
# test-unit against the cascade at concurrency 1, 4 and 16, REPEATS times
# each; writes one JSON report per run into OUT_DIR/LABEL-cC-rR.json.
#   bench_cascade.sh OUT_DIR LABEL SECONDS REPEATS
set -euo pipefail
OUT=$1
LABEL=$2
SECONDS_EACH=$3
REPEATS=$4
BIN=${DNET_BIN_DIR:-target/release}
for c in 1 4 16; do
  for r in $(seq 1 "$REPEATS"); do
    echo "[bench] $LABEL, concurrency $c, run $r of $REPEATS (${SECONDS_EACH}s)"
    "$BIN/test-unit" -a "$FIRST_UNIT" -c "$c" --duration "${SECONDS_EACH}s" --json "$OUT/$LABEL-c$c-r$r.json" >/dev/null
  done
done
