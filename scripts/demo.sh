#!/usr/bin/env bash
# Local cascade demo: transmission units chained 8 -> 12 -> 16 on loopback.
# Every process it starts is stopped when it ends (also on Ctrl-C).
set -euo pipefail
BIN=${DNET_BIN_DIR:-target/release}
LOGS=$(mktemp -d /tmp/dnet-demo.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "[demo] stopped ${#PIDS[@]} processes; logs in $LOGS"
}
trap cleanup EXIT INT TERM

start_unit() { # exit port next
  local exit=$1 port=$2 next=$3
  local args=(-l "127.0.0.1:$port" -q "dnet-demo-$exit" --unit-name "unit-$exit")
  [ -n "$next" ] && args+=(-n "127.0.0.1:$next")
  "$BIN/transmission-unit" "${args[@]}" >"$LOGS/transmission-unit-$exit.log" 2>&1 &
  PIDS+=($!)
}

start_unit 16 50062 ""
start_unit 12 50061 50062
start_unit 8 50060 50061
for exit in 8 12 16; do
  for _ in $(seq 1 50); do
    grep -q "ready: publishing" "$LOGS/transmission-unit-$exit.log" && break
    sleep 0.2
  done
  echo "[demo] transmission unit of exit $exit: $(grep -o 'ready: publishing.*' "$LOGS/transmission-unit-$exit.log" || echo 'NOT READY')"
done
echo "[demo] missing: computation units (issue 3) to consume queues dnet-demo-8/12/16, and a client to send requests."
