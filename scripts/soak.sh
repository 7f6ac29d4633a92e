#!/usr/bin/env bash
# Run inside scripts/cascade.sh by `make soak`: test-unit at a steady open-loop
# rate for a long time, and each unit process's memory (RSS) and open file
# descriptors at the start and at the end. Writes a Markdown section, and
# exits 1 when a request failed or went unanswered, or a process grew past
# the bound (RSS by more than 10 % or 8 MiB, whichever is more, or 4 more
# open descriptors), or ended.
#   soak.sh OUT.md RATE SECONDS
set -euo pipefail
OUT=$1 RATE=$2 SECONDS_TOTAL=$3
BIN=${DNET_BIN_DIR:-target/release}
WARMUP=30
sample() { # file: "name rss_kib fds" per process, "name gone" for one that ended
  while read -r pid name; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    if [ -n "$rss" ]; then echo "$name $rss $(ls "/proc/$pid/fd" | wc -l)"; else echo "$name gone"; fi
  done < "$CASCADE_PIDS" > "$1"
}
TMP=$(mktemp -d)
"$BIN/test-unit" -a "$FIRST_UNIT" --rate "$RATE" --duration "${SECONDS_TOTAL}s" --timeout 10s --json "$TMP/report.json" >"$TMP/report.txt" &
LOAD=$!
sleep "$WARMUP"
sample "$TMP/start"
wait "$LOAD" || true
sample "$TMP/end"
status=0
python3 - "$TMP" "$RATE" "$SECONDS_TOTAL" "$WARMUP" > "$OUT" <<'PY' || status=$?
import json, sys
GROWTH_SHARE, GROWTH_MIB, MORE_FDS = 0.10, 8, 4
tmp, rate, seconds, warmup = sys.argv[1:5]
report = json.load(open(f"{tmp}/report.json"))
start = {l.split()[0]: l.split()[1:] for l in open(f"{tmp}/start")}
end = {l.split()[0]: l.split()[1:] for l in open(f"{tmp}/end")}
errors = sum(report["errors"].values())
print("## Soak\n")
print(f"The `make demo` cascade (8 -> 12 -> 16) under `test-unit --rate {rate}` (Poisson arrivals; set DNET_SOAK_RATE to about 80% of the")
print(f"cascade's capacity measured by `make bench`) for {seconds} s. Memory and open file descriptors of every")
print(f"process after {warmup} s of warm-up and at the end:\n")
print(f"Requests: {report['sent']} sent, {report['answered']} answered, {errors} errors {report['errors']}; "
      f"latency p50 {report['latency_ms']['p50']:.0f} ms, p99 {report['latency_ms']['p99']:.0f} ms.\n")
print("| process | RSS start MiB | RSS end MiB | change | fds start | fds end | within the bound |")
print("|---|---|---|---|---|---|---|")
broken = []
unanswered = report["sent"] - report["answered"]
if errors or unanswered:
    broken.append(f"{errors} errors, {unanswered} unanswered")
for name in start:
    if start[name][0] == "gone":
        broken.append(f"{name} had ended before the warm-up was over")
        print(f"| {name} | gone | | | | | no |")
        continue
    rs, fs = int(start[name][0]), int(start[name][1])
    if end.get(name, ["gone"])[0] == "gone":
        broken.append(f"{name} ended during the soak")
        print(f"| {name} | {rs/1024:.1f} | gone | | {fs} | | no |")
        continue
    re_, fe = int(end[name][0]), int(end[name][1])
    grew = re_ - rs > max(GROWTH_SHARE * rs, GROWTH_MIB * 1024) or fe - fs > MORE_FDS
    if grew:
        broken.append(f"{name} grew from {rs/1024:.1f} to {re_/1024:.1f} MiB, {fs} to {fe} fds")
    print(f"| {name} | {rs/1024:.1f} | {re_/1024:.1f} | {100*(re_-rs)/rs:+.1f}% | {fs} | {fe} | {'no' if grew else 'yes'} |")
print()
print(f"Bounds: no request fails or goes unanswered; no process ends, nor does its RSS grow by more than "
      f"{GROWTH_SHARE:.0%} or {GROWTH_MIB} MiB (whichever is more), nor its open descriptors by more than {MORE_FDS}, "
      "between the warm-up and the end. "
      + ("All held." if not broken else "**Broken**: " + "; ".join(broken) + "."))
print()
sys.exit(1 if broken else 0)
PY
cat "$TMP/report.txt"
[ "$status" = 0 ] || echo "[soak] FAILED: a bound broke (see $OUT)" >&2
exit "$status"
