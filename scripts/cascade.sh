#!/usr/bin/env bash
# A local cascade: three units chained exit 8 -> 12 -> 16 on loopback, with
# the same random weights: each a transmission unit and a computation unit
# (DNET_LAYOUT=broker, the default), or one direct unit, `computation-unit
# serve`, with no broker (DNET_LAYOUT=direct). Runs
# the given command with FIRST_UNIT=127.0.0.1:50060, CASCADE_PIDS (a file of
# "pid name" lines) and CASCADE_THRESHOLDS (the 15 thresholds of the whole
# cascade, for an in-process run of the same exit policy) set, then stops
# every process it started (also on failure or Ctrl-C).
#   scripts/cascade.sh COMMAND [ARGS...]
# DNET_CASCADE_THREADS: libtorch threads per computation unit (default: theirs).
# DNET_CASCADE_WEIGHTS: a .safetensors file for every unit (default: random
# weights DNET_DEMO_SEED); DNET_CASCADE_THRESHOLDS_FILE: the units of exits 8
# and 12 read their thresholds from it (--thresholds-file) instead of the
# demo's; DNET_CASCADE_UNIT8_ARGS: more flags for the first unit (its
# transmission unit, or the direct unit); DNET_CASCADE_CU_ARGS: more flags
# for every computation unit (broker layout). DNET_CASCADE_PIN=1: unit 8's
# processes run on CPU 0 and the other units' on the remaining CPUs (taskset),
# as if the first unit were a host of its own.
set -euo pipefail
LAYOUT=${DNET_LAYOUT:-broker}
case "$LAYOUT" in broker|direct) ;; *) echo "[cascade] DNET_LAYOUT must be broker or direct, not '$LAYOUT'"; exit 2;; esac
BIN=${DNET_BIN_DIR:-target/release}
SEED=${DNET_DEMO_SEED:-1}
THREADS=${DNET_CASCADE_THREADS:-}
# Random weights are untrained: every exit's confidence stays near 0.1 (ten
# classes). These thresholds sit inside that range, so that some requests
# answer at exit 8 or 12 and the rest go on to 16. Trained weights use the defaults.
THRESHOLDS_8=${DNET_DEMO_THRESHOLDS_8:-0.10682}
THRESHOLDS_12=${DNET_DEMO_THRESHOLDS_12:-0.10888}
WEIGHTS=${DNET_CASCADE_WEIGHTS:-}
THRESHOLDS_FILE=${DNET_CASCADE_THRESHOLDS_FILE:-}
read -r -a UNIT8_ARGS <<<"${DNET_CASCADE_UNIT8_ARGS:-}"
read -r -a CU_ARGS <<<"${DNET_CASCADE_CU_ARGS:-}"
if [ -n "$WEIGHTS" ]; then MODEL=(--weights "$WEIGHTS"); else MODEL=(--random-weights "$SEED"); fi
CPUS=$(nproc)
pinned() { # exit: the taskset prefix of the unit's processes, if any
  if [ "${DNET_CASCADE_PIN:-0}" = 1 ] && [ "$CPUS" -ge 2 ]; then
    if [ "$1" = 8 ]; then echo "taskset -c 0"; else echo "taskset -c 1-$((CPUS - 1))"; fi
  fi
}
LOGS=$(mktemp -d /tmp/dnet-cascade.XXXXXX)
PIDS=()
NAMES=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "[cascade] stopped ${#PIDS[@]} processes; their logs are in $LOGS"
}
trap cleanup EXIT INT TERM

source "$(dirname "${BASH_SOURCE[0]}")/thresholds.sh"

start_unit() { # exit port next thresholds
  local exit=$1 port=$2 next=$3 queue="dnet-demo-$1" thresholds=()
  if [ -n "$4" ] && [ -n "$THRESHOLDS_FILE" ]; then thresholds=(--thresholds-file "$THRESHOLDS_FILE");
  elif [ -n "$4" ]; then thresholds=(--thresholds "$4"); fi
  local extra=()
  [ "$exit" = 8 ] && extra=("${UNIT8_ARGS[@]}")
  local pin
  read -r -a pin <<<"$(pinned "$exit")"
  if [ "$LAYOUT" = direct ]; then
    "${pin[@]}" "$BIN/computation-unit" serve -l "127.0.0.1:$port" ${next:+-n "127.0.0.1:$next"} -e "$exit" \
      "${MODEL[@]}" --unit-name "unit-$exit" ${THREADS:+--threads "$THREADS"} "${thresholds[@]}" "${extra[@]}" \
      >"$LOGS/unit-$exit.log" 2>&1 &
    PIDS+=($!)
    NAMES+=("direct-unit-$exit")
    return
  fi
  "${pin[@]}" "$BIN/computation-unit" -q "$queue" -e "$exit" "${MODEL[@]}" --unit-name "cu-$exit" ${THREADS:+--threads "$THREADS"} \
    "${thresholds[@]}" "${CU_ARGS[@]}" >"$LOGS/computation-unit-$exit.log" 2>&1 &
  PIDS+=($!)
  NAMES+=("computation-unit-$exit")
  local args=(-l "127.0.0.1:$port" -q "$queue" --unit-name "unit-$exit" "${extra[@]}")
  [ -n "$next" ] && args+=(-n "127.0.0.1:$next")
  "${pin[@]}" "$BIN/transmission-unit" "${args[@]}" >"$LOGS/transmission-unit-$exit.log" 2>&1 &
  PIDS+=($!)
  NAMES+=("transmission-unit-$exit")
}

echo "[cascade] starting three units ($LAYOUT layout): exit 8 (:50060) -> exit 12 (:50061) -> exit 16 (:50062)"
start_unit 16 50062 "" ""
start_unit 12 50061 50062 "$(thresholds 12 "$THRESHOLDS_12")"
start_unit 8 50060 50061 "$(thresholds 8 "$THRESHOLDS_8")"
ready() { # exit: the unit serves (direct) or consumes and publishes (broker)
  if [ "$LAYOUT" = direct ]; then
    # A direct unit binds before its model loads, and forwards only once its
    # next unit's grpc.health says SERVING: wait for both, not the bind.
    grep -q "model ready" "$LOGS/unit-$1.log" &&
      { [ "$1" = 16 ] || grep -q "next address serving" "$LOGS/unit-$1.log"; }
  else
    grep -q "consuming" "$LOGS/computation-unit-$1.log" && grep -q "ready: publishing" "$LOGS/transmission-unit-$1.log"
  fi
}
for exit in 8 12 16; do
  for _ in $(seq 1 150); do
    ready "$exit" && break
    sleep 0.2
  done
  ready "$exit" || { echo "[cascade] unit $exit did not start:"; cat "$LOGS"/*"-$exit.log"; exit 1; }
done
# "pid name" per line, for commands that watch the processes (make soak).
for i in "${!PIDS[@]}"; do echo "${PIDS[$i]} ${NAMES[$i]}"; done > "$LOGS/pids"
FIRST_UNIT=127.0.0.1:50060 CASCADE_PIDS="$LOGS/pids" \
  CASCADE_THRESHOLDS=$(thresholds 8 "$THRESHOLDS_8" 12 "$THRESHOLDS_12") "$@"
