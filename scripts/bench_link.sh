#!/usr/bin/env bash
# `make bench-link`: the cascade across a slow link, the case DNet exists for.
# Three network namespaces, device, edge and cloud, joined by veth pairs:
#   device <-> edge            LAN: DNET_LAN_RATE (100mbit), DNET_LAN_RTT_MS (2)
#   edge   <-> cloud           WAN: DNET_WAN_RATE (20mbit),  DNET_WAN_RTT_MS (20)
#   device <-> cloud           WAN: the same profile
# The rate is tc's (a tbf qdisc on both ends of each veth). The round trip is
# a delay line in front of each unit (scripts/delay_line.py: half the round
# trip each way), not netem: kernels without sch_netem (this machine's among
# them) have tbf, and the delay line holds bytes without stalling the flow.
# Units are direct units (`computation-unit serve`, no broker), one libtorch
# thread each, random weights. Per answer it measures the bytes that crossed the
# WAN links (both directions, from the interfaces' counters) and the latency:
#   (a) all in the cloud: the raw image to a 0 -> 16 unit
#   (b) edge 0 -> 8, then the cloud 8 -> 16, f32 on the wire
#   (c) the same with f16 on the wire
#   (d) the device computes exit 4 itself (test-unit -e 4), then edge and cloud
# Only addresses inside the namespaces it creates (10.231.0.0/16) are used;
# every namespace (and so every veth) is removed at the end, also on failure.
# Writes bench-link/link.md and docs/bench-link.svg, then the link section of
# BENCHMARKS.md. Needs root, ip and tc (iproute2, with the tbf qdisc) and python3.
#   scripts/bench_link.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DNET_BIN_DIR:-target/release}
OUT=${DNET_LINK_OUT:-$PWD/bench-link}
LAN_RATE=${DNET_LAN_RATE:-100mbit}
LAN_RTT_MS=${DNET_LAN_RTT_MS:-2}
WAN_RATE=${DNET_WAN_RATE:-20mbit}
WAN_RTT_MS=${DNET_WAN_RTT_MS:-20}
REQUESTS=${DNET_LINK_REQUESTS:-40}
REPEATS=${DNET_LINK_REPEATS:-3}
SEED=${DNET_DEMO_SEED:-1}
# Random weights are untrained (confidences near 0.1): thresholds inside that
# range let some answers come from the device's and the edge's exits.
THRESHOLD_4=${DNET_LINK_THRESHOLD_4:-0.21}
THRESHOLD_8=${DNET_LINK_THRESHOLD_8:-0.1076}
PORT=50070       # each unit, on its namespace's loopback
LINE_PORT=50071  # its delay line, on the namespace's link addresses

say() { echo "[bench-link] $*" >&2; }
missing=()
[ "$(id -u)" = 0 ] || missing+=("root (network namespaces and tc need it: run as root)")
command -v ip >/dev/null || missing+=("ip (Debian: apt-get install iproute2)")
command -v tc >/dev/null || missing+=("tc (Debian: apt-get install iproute2)")
command -v python3 >/dev/null || missing+=("python3 (Debian: apt-get install python3)")
if [ ${#missing[@]} -gt 0 ]; then
  say "cannot build the testbed; missing:"
  for m in "${missing[@]}"; do say "  - $m"; done
  exit 2
fi
for b in computation-unit test-unit; do
  [ -x "$BIN/$b" ] || { say "$BIN/$b is not built: run 'make build' first"; exit 2; }
done

TAG="dnl$$"
DEV="$TAG-dev" EDGE="$TAG-edge" CLOUD="$TAG-cloud"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in "$DEV" "$EDGE" "$CLOUD"; do ip netns del "$ns" 2>/dev/null || true; done
  say "removed namespaces $DEV, $EDGE, $CLOUD"
}
trap cleanup EXIT INT TERM

for ns in "$DEV" "$EDGE" "$CLOUD"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
# end NS IF ADDR RATE: one end of a link: its address, and the link's rate on
# the way out (a queue deep enough for the largest tensor, so nothing drops).
end() {
  ip -n "$1" addr add "$3/24" dev "$2"
  ip -n "$1" link set "$2" up
  tc -n "$1" qdisc add dev "$2" root tbf rate "$4" burst 16kb limit 8mb || {
    say "tc could not add a tbf qdisc: the kernel needs sch_tbf"
    exit 2
  }
}
# link NS_A IF_A ADDR_A NS_B IF_B ADDR_B RATE
link() {
  ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
  end "$1" "$2" "$3" "$7"
  end "$4" "$5" "$6" "$7"
}
link "$DEV" "$TAG-de" 10.231.1.1 "$EDGE" "$TAG-ed" 10.231.1.2 "$LAN_RATE"
link "$EDGE" "$TAG-ec" 10.231.2.1 "$CLOUD" "$TAG-ce" 10.231.2.2 "$WAN_RATE"
link "$DEV" "$TAG-dc" 10.231.3.1 "$CLOUD" "$TAG-cd" 10.231.3.2 "$WAN_RATE"
# The round trip is a delay line whether or not netem exists; the report says which.
if tc -n "$DEV" qdisc add dev lo root netem delay 1ms 2>/dev/null; then
  tc -n "$DEV" qdisc del dev lo root
  export DNET_LINK_NETEM=yes
else
  export DNET_LINK_NETEM=no
fi
say "namespaces $DEV, $EDGE, $CLOUD; LAN $LAN_RATE ${LAN_RTT_MS} ms RTT, WAN $WAN_RATE ${WAN_RTT_MS} ms RTT"

source scripts/thresholds.sh # (the working folder is the repository's, above)

# unit NS NAME EXIT RTT_MS [more flags]: a direct unit on NS's loopback, behind
# a delay line of half RTT_MS each way on every address of NS, port LINE_PORT.
unit() {
  local ns=$1 name=$2 exit=$3 rtt=$4
  shift 4
  ip netns exec "$ns" python3 scripts/delay_line.py "0.0.0.0:$LINE_PORT" "127.0.0.1:$PORT" \
    "$(awk "BEGIN {print $rtt / 2}")" >"$OUT/logs/$name-delay-line.log" 2>&1 &
  PIDS+=($!)
  ip netns exec "$ns" "$BIN/computation-unit" serve -l "127.0.0.1:$PORT" -e "$exit" --random-weights "$SEED" \
    --threads 1 --unit-name "$name" --log-format json "$@" >"$OUT/logs/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do
    grep -q '"message":"serving"' "$OUT/logs/$name.log" && return
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  say "unit $name did not start:"; cat "$OUT/logs/$name.log" >&2; exit 1
}

stop_units() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}

wan_bytes() { # both directions of both WAN links, from the device's and the edge's side
  local total=0 ns_if
  for ns_if in "$DEV $TAG-dc" "$EDGE $TAG-ec"; do
    set -- $ns_if
    total=$((total + $(ip -n "$1" -s -j link show dev "$2" | python3 -c \
      'import json,sys; s=json.load(sys.stdin)[0]["stats64"]; print(s["rx"]["bytes"] + s["tx"]["bytes"])')))
  done
  echo "$total"
}

# scenario LABEL FIRST_UNIT [test-unit flags]: REPEATS runs of REQUESTS calls at concurrency 1.
scenario() {
  local label=$1 first=$2
  shift 2
  # One call first: connections up, models warm.
  ip netns exec "$DEV" "$BIN/test-unit" -a "$first" -n 1 "$@" >/dev/null
  for r in $(seq 1 "$REPEATS"); do
    local before after
    before=$(wan_bytes)
    ip netns exec "$DEV" "$BIN/test-unit" -a "$first" -n "$REQUESTS" --seed "$r" --json "$OUT/runs/$label-r$r.json" "$@" >/dev/null
    after=$(wan_bytes)
    echo "$((after - before))" > "$OUT/runs/$label-r$r.wan"
    say "$label run $r: $((after - before)) bytes over the WAN"
  done
}

rm -rf "$OUT" && mkdir -p "$OUT/logs" "$OUT/runs"
EDGE_THRESHOLDS=$(thresholds 8 "$THRESHOLD_8")

say "(a) all in the cloud"
unit "$CLOUD" cloud-16 16 "$WAN_RTT_MS"
scenario a-cloud "10.231.3.2:$LINE_PORT"
stop_units

say "(b) edge 0 -> 8, cloud 8 -> 16, f32 on the wire"
unit "$CLOUD" cloud-16 16 "$WAN_RTT_MS"
unit "$EDGE" edge-8 8 "$LAN_RTT_MS" --thresholds "$EDGE_THRESHOLDS" -n "10.231.2.2:$LINE_PORT"
scenario b-edge-f32 "10.231.1.2:$LINE_PORT"
stop_units

say "(c) the same with f16 on the wire"
unit "$CLOUD" cloud-16 16 "$WAN_RTT_MS"
unit "$EDGE" edge-8 8 "$LAN_RTT_MS" --thresholds "$EDGE_THRESHOLDS" -n "10.231.2.2:$LINE_PORT" --wire-dtype f16
scenario c-edge-f16 "10.231.1.2:$LINE_PORT"
stop_units

say "(d) device exit 4, then edge and cloud"
unit "$CLOUD" cloud-16 16 "$WAN_RTT_MS"
unit "$EDGE" edge-8 8 "$LAN_RTT_MS" --thresholds "$EDGE_THRESHOLDS" -n "10.231.2.2:$LINE_PORT"
scenario d-device-4 "10.231.1.2:$LINE_PORT" -e 4 --random-weights "$SEED" --threads 1 \
  --thresholds "$(thresholds 4 "$THRESHOLD_4")"
stop_units

# The same layouts as `test-unit plan` predicts them: per-layer times measured
# here (one thread, the units stopped), where each run's images exit under the
# units' thresholds, and the links as configured. The report sets both side by side.
say "plan: predicting the same layouts"
mkdir -p "$OUT/plan"
"$BIN/test-unit" profile --random-weights "$SEED" --threads 1 --json "$OUT/plan/times.json" >/dev/null
LAN="$LAN_RATE/${LAN_RTT_MS}ms" WAN="$WAN_RATE/${WAN_RTT_MS}ms"
for r in $(seq 1 "$REPEATS"); do
  "$BIN/test-unit" calibrate --random-weights "$SEED" --threads 1 --synthetic "$REQUESTS" --seed "$r" \
    --thresholds "$(thresholds 4 "$THRESHOLD_4" 8 "$THRESHOLD_8")" \
    --json "$OUT/plan/calibration-r$r.json" >/dev/null 2>&1
  predict() { # LABEL, then plan's flags
    local label=$1
    shift
    "$BIN/test-unit" plan --calibration "$OUT/plan/calibration-r$r.json" --times "$OUT/plan/times.json" "$@" \
      --json "$OUT/plan/$label-r$r.json" >/dev/null
  }
  predict a-cloud --client-link "$WAN" --exits 16
  predict b-edge-f32 --client-link "$LAN" --links "$WAN" --exits 8,16
  predict c-edge-f16 --client-link "$LAN" --links "$WAN" --exits 8,16 --wire-dtype f16
  predict d-device-4 --links "$LAN,$WAN" --exits 4,8,16
done

python3 scripts/bench_link_report.py "$OUT" "$LAN_RATE" "$LAN_RTT_MS" "$WAN_RATE" "$WAN_RTT_MS" "$REQUESTS" "$REPEATS" \
  > "$OUT/link.md"
python3 scripts/bench_assemble.py --only link "$OUT"
say "BENCHMARKS.md: link section rewritten (from $OUT/link.md; plot docs/bench-link.svg)"
