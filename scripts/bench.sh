#!/usr/bin/env bash
# `make bench`: runs every benchmark and rewrites BENCHMARKS.md from their
# sections. The GPU section is kept as it was unless this machine has CUDA
# (then scripts/bench_gpu.sh measures it again).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$PWD/bench-out"
BIN=${DNET_BIN_DIR:-target/release}
SECONDS_EACH=${DNET_BENCH_SECONDS:-5}
REPEATS=${DNET_BENCH_REPEATS:-5}
rm -rf "$OUT" && mkdir -p "$OUT/runs"

cargo build --release --workspace --bins
DNET_BENCH_OUT="$OUT/10-transmission-unit.md" cargo bench -p transmission-unit --bench hop
DNET_BENCH_OUT="$OUT/15-quorum.md" cargo bench -p transmission-unit --bench quorum
DNET_BENCH_OUT="$OUT/20-model.md" cargo bench -p dnet-model --bench model
DNET_BENCH_OUT="$OUT/25-unit.md" cargo bench -p computation-unit --bench unit

# The cascade with each unit's default threads, with batching and without;
# then with one thread per unit, direct and broker layouts, against the same
# exit policy in one process (three engines, one thread each).
scripts/cascade.sh scripts/bench_cascade.sh "$OUT/runs" default "$SECONDS_EACH" "$REPEATS"
DNET_MAX_BATCH_SIZE=1 scripts/cascade.sh scripts/bench_cascade.sh "$OUT/runs" unbatched "$SECONDS_EACH" "$REPEATS"
DNET_CASCADE_THREADS=1 DNET_LAYOUT=direct scripts/cascade.sh scripts/bench_cascade.sh "$OUT/runs" direct-one-thread "$SECONDS_EACH" "$REPEATS"
DNET_CASCADE_THREADS=1 scripts/cascade.sh bash -c '
  scripts/bench_cascade.sh "$0" one-thread "$1" "$2"
  for c in 1 4 16; do
    for r in $(seq 1 "$2"); do
      echo "[bench] in process, concurrency $c, run $r of $2 (${1}s)"
      "$3/test-unit" -e 8,12,16 --random-weights "${DNET_DEMO_SEED:-1}" --threads 1 \
        --thresholds "$CASCADE_THRESHOLDS" -c "$c" --duration "${1}s" --json "$0/in-process-c$c-r$r.json" >/dev/null
    done
  done' "$OUT/runs" "$SECONDS_EACH" "$REPEATS" "$BIN"
python3 scripts/bench_cascade_report.py "$OUT/runs" "$SECONDS_EACH" "$REPEATS" > "$OUT/30-cascade.md"

scripts/bench_trained.sh "$OUT/trained-runs"
python3 scripts/bench_trained_report.py "$OUT/trained-runs" > "$OUT/trained.md"

if scripts/bench_gpu.sh --check; then
  scripts/bench_gpu.sh "$OUT/gpu.md"
fi

python3 scripts/bench_assemble.py "$OUT"
echo "[bench] BENCHMARKS.md rewritten"
