#!/usr/bin/env bash
# `make bench`: early exit's value on the demo model trained on scikit-learn's
# digits (scripts/trained_model.sh trains it if missing), on its test set,
# through the cascade 8 -> 12 -> 16 (scripts/cascade.sh, DNET_LAYOUT; one
# libtorch thread per unit, unit 8 alone on CPU 0 and units 12 and 16 on the
# other CPUs, as if the first unit were a device of its own):
#   value    thresholds calibrated for 99% agreement with exit 16 on the
#            validation set, against exit 16 alone (the same units, every
#            threshold 1), at concurrency 1 and 16;
#   shadow   the calibrated cascade with unit 8 sending shadow work
#            (--shadow-rate 0, 0.1 and 1), at concurrency 1 and 4;
#   late     open-loop load at 3x capacity (each policy's answers/s at
#            concurrency 16 in the first part), 500 ms deadlines, unit 8
#            with --answer-when-late and without: for exit 16 alone (every
#            sample goes on, the next units are the bottleneck; also at 2x)
#            and for the calibrated thresholds (unit 8 is);
#   live     a cascade of direct units 8 -> 16, unit 8 calibrating its own
#            threshold on the test set as traffic from three starts, then on
#            noisy inputs (scripts/bench_live.py, into OUT_DIR/live).
# Every run writes test-unit's JSON report and its --answers lines to OUT_DIR,
# and unit 8's metrics after it; scripts/bench_trained_report.py turns them
# into the BENCHMARKS.md section.
#   scripts/bench_trained.sh OUT_DIR
# DNET_BENCH_LATE_SECONDS: length of each overload run (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1
BIN=${DNET_BIN_DIR:-target/release}
DEMO=${DNET_CACHE:-$HOME/.cache/dnet}/demo
VENV=${DNET_VENV:-${DNET_CACHE:-$HOME/.cache/dnet}/venv}
LATE_SECONDS=${DNET_BENCH_LATE_SECONDS:-20}
mkdir -p "$OUT"
export BIN DEMO OUT LATE_SECONDS
export DNET_CASCADE_THREADS=1 DNET_CASCADE_PIN=1

scripts/trained_model.sh
"$BIN/test-unit" calibrate --weights "$DEMO/digits.safetensors" --dataset "$DEMO/digits-validation.bin" \
  --target-agreement 0.99 --exits 8,12,16 --write-thresholds "$OUT/calibrated.txt" --json "$OUT/calibration.json" >/dev/null
printf '1%.0s,' $(seq 1 14) > "$OUT/exit16.txt" && echo 1 >> "$OUT/exit16.txt"
records=$(( $(stat -c %s "$DEMO/digits-test.bin") / 3073 ))
echo "{\"records\": $records, \"layout\": \"${DNET_LAYOUT:-broker}\"}" > "$OUT/meta.json"

# run NAME ARGS...: test-unit against the cascade's first unit on the test
# set, then unit 8's metrics (its edge listens on 127.0.0.1:9190 here).
cat > "$OUT/run.sh" <<'EOF'
run() {
  local name=$1; shift
  echo "[bench] trained: $name"
  "$BIN/test-unit" -a "$FIRST_UNIT" --dataset "$DEMO/digits-test.bin" --json "$OUT/$name.json" \
    --answers "$OUT/$name.jsonl" "$@" >/dev/null
  curl -s http://127.0.0.1:9190/metrics > "$OUT/$name.metrics" || true
}
EOF

cascade() { # thresholds-file unit-8-flags command
  DNET_CASCADE_WEIGHTS="$DEMO/digits.safetensors" DNET_CASCADE_THRESHOLDS_FILE="$1" \
    DNET_CASCADE_UNIT8_ARGS="--metrics-address 127.0.0.1:9190 $2" scripts/cascade.sh bash -c "source \"$OUT/run.sh\"; $3"
}

for policy in calibrated exit16; do
  cascade "$OUT/$policy.txt" "" "
    run warm-$policy -n 32
    for c in 1 16; do run value-$policy-c\$c -n $(( 2 * records )) -c \$c; done"
done

for shadow in 0 0.1 1; do
  cascade "$OUT/calibrated.txt" "--shadow-rate $shadow" "
    run warm-shadow$shadow -n 32
    for c in 1 4; do run shadow$shadow-c\$c -n $(( 2 * records )) -c \$c; done"
done

# 3x each policy's capacity (its answers/s at concurrency 16, as above), and
# 2x for exit 16 alone (below unit 8's own capacity), 500 ms deadlines; the
# flag at unit 8 or not.
for run in exit16:2 exit16:3 calibrated:3; do
  policy=${run%:*} factor=${run#*:}
  rate=$(python3 -c 'import json,sys; print(round(int(sys.argv[2]) * json.load(open(sys.argv[1]))["throughput_rps"], 1))' \
    "$OUT/value-$policy-c16.json" "$factor")
  for late in off on; do
    flags=""
    [ "$late" = on ] && flags="--answer-when-late"
    cascade "$OUT/$policy.txt" "$flags" "
      run warm-late-$policy-x$factor-$late -n 32
      run late-$policy-x$factor-$late --rate $rate --duration ${LATE_SECONDS}s --timeout 500ms"
  done
done

DNET_BIN_DIR="$BIN" "$VENV/bin/python" scripts/bench_live.py "$OUT/live"
