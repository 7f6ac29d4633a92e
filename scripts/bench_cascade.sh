#!/usr/bin/env bash
# Run by bench.sh inside scripts/cascade.sh: test-unit against the cascade at
# concurrency 1, 4 and 16, then the in-process limit (-e 16: every layer in
# the client's process, no network), and the Markdown section from their JSON.
#   bench_cascade.sh OUT_DIR SECONDS
set -euo pipefail
OUT=$1
SECONDS_EACH=$2
BIN=${DNET_BIN_DIR:-target/release}
for c in 1 4 16; do
  echo "[bench] cascade, concurrency $c, ${SECONDS_EACH}s"
  "$BIN/test-unit" -a "$FIRST_UNIT" -c "$c" --duration "${SECONDS_EACH}s" --json "$OUT/cascade-c$c.json" >/dev/null
done
echo "[bench] in-process limit, ${SECONDS_EACH}s"
"$BIN/test-unit" -e 16 --random-weights "${DNET_DEMO_SEED:-1}" --threads 2 -c 1 --duration "${SECONDS_EACH}s" \
  --json "$OUT/in-process.json" >/dev/null
python3 - "$OUT" "$SECONDS_EACH" <<'PY' > "$OUT/30-cascade.md"
import json, sys
out, seconds = sys.argv[1], sys.argv[2]
limit = json.load(open(f"{out}/in-process.json"))
print("## Cascade end to end (test-unit)\n")
print("Three units on loopback, exit 8 -> 12 -> 16 (`scripts/cascade.sh`: each a transmission unit and a")
print("computation unit with 1 libtorch thread, random weights, demo thresholds so that answers come from")
print(f"every exit), driven by `test-unit` for {seconds} s per row (closed loop, synthetic images). The in-process")
print("limit is `test-unit -e 16 --threads 2`: every layer computed in the client's process, no network.")
print("A ratio above 1 is the point of the cascade: most requests exit early and skip the later layers.\n")
print("| load | answers/s | p50 ms | p90 ms | p99 ms | exits 8/12/16 | ratio answers/s vs in-process |")
print("|---|---|---|---|---|---|---|")
def row(name, r, exits):
    l = r["latency_ms"] or {}
    ratio = r["throughput_rps"] / limit["throughput_rps"]
    print(f"| {name} | {r['throughput_rps']:.1f} | {l.get('p50', 0):.1f} | {l.get('p90', 0):.1f} | {l.get('p99', 0):.1f} | {exits} | {ratio:.2f} |")
for c in (1, 4, 16):
    r = json.load(open(f"{out}/cascade-c{c}.json"))
    e = r["exits"]
    errors = sum(r["errors"].values())
    row(f"cascade, concurrency {c}" + (f" ({errors} errors)" if errors else ""), r, "/".join(str(e.get(k, 0)) for k in ("8", "12", "16")))
row("in-process limit", limit, "-")
print()
hops = json.load(open(f"{out}/cascade-c1.json"))["hops"]
print("Mean per-hop split at concurrency 1 (ms):\n")
print("| hop | unit | answers | queue wait | compute | network |")
print("|---|---|---|---|---|---|")
for h in hops:
    print(f"| {h['hop']} | {h['unit']} | {h['count']} | {h['queue_wait_ms']:.2f} | {h['compute_ms']:.2f} | {h['network_ms']:.2f} |")
print()
PY
