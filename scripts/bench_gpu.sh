#!/usr/bin/env bash
# The GPU section of BENCHMARKS.md, where CUDA is present: the engine at
# exit 16 with batching (test-unit -e 16: every layer in process, closed-loop
# callers, one image each) in f32 and bf16 at batch sizes up to 4096, and the
# batch-1 latency.
#   bench_gpu.sh --check      exit 0 when a CUDA device is usable
#   bench_gpu.sh OUT.md       measure and write the section
set -euo pipefail
BIN=${DNET_BIN_DIR:-target/release}
SECONDS_EACH=${DNET_GPU_SECONDS:-10}
if [ "${1:-}" = "--check" ]; then
  exec "$BIN/test-unit" -e 16 --random-weights 1 --device cuda -n 1 >/dev/null 2>&1
fi
OUT=$1
RUNS=$(mktemp -d)
run() { # precision batch concurrency -> JSON report path
  local json="$RUNS/$1-b$2-c$3.json"
  "$BIN/test-unit" -e 16 --random-weights 1 --device cuda --precision "$1" --max-batch-size "$2" \
    -c "$3" --duration "${SECONDS_EACH}s" --json "$json" >/dev/null
  echo "$json"
}
rows=()
for precision in f32 bf16; do
  for batch in 64 256 1024 4096; do
    rows+=("$precision $batch $(run "$precision" "$batch" "$batch")")
  done
done
latency=$(run f32 1 1)
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 || echo "a CUDA GPU")
python3 - "$OUT" "$gpu" "$latency" "${rows[@]}" <<'PY'
import datetime, json, sys
out, gpu, latency, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
lines = [f"## GPU\n\nMeasured on {day} on {gpu} by `scripts/bench_gpu.sh`: `test-unit -e 16` (the engine in process, "
         "closed-loop callers of one image each, as many callers as the batch size), random weights. Goals: "
         ">= 24k images/s in bf16; batch-1 latency <= 8.5 ms (PyTorch eager on an H200).\n",
         "| precision | max batch size | images/s | p50 ms |", "|---|---|---|---|"]
for row in rows:
    precision, batch, path = row.split(" ", 2)
    r = json.load(open(path))
    lines.append(f"| {precision} | {batch} | {r['throughput_rps']:.0f} | {r['latency_ms']['p50']:.1f} |")
r = json.load(open(latency))
lines.append(f"\nBatch-1 latency (f32, one caller): p50 {r['latency_ms']['p50']:.2f} ms.")
open(out, "w").write("\n".join(lines) + "\n")
PY
echo "[bench] GPU section written to $OUT"
