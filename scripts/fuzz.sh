#!/usr/bin/env bash
# Runs the cargo fuzz targets (`cargo fuzz list`) on the committed corpus.
#   scripts/fuzz.sh SECONDS
#     each target for SECONDS (`make test`: 10); new inputs go to a temporary
#     folder, so the tree stays clean; the first crash fails the run.
#   scripts/fuzz.sh --long [SECONDS] [TARGET]
#     each target, or TARGET, for SECONDS (default 600) in libFuzzer's fork
#     mode, which goes on past crashes and OOMs and counts them; then its new
#     inputs join fuzz/corpus/TARGET, minimised with `cargo fuzz cmin` (commit
#     it by hand), and one line says runs, crashes, OOMs, coverage and corpus.
#     Exits non-zero when anything crashed or ran out of memory.
# The pickle target runs under a malloc limit (see limits_of): an allocation
# the reader's bounds do not cover fails the run as an OOM.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo fuzz needs -Z flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
MAX_LEN=65536

# libFuzzer's memory limits for a target. pickle: its largest legitimate
# allocation is one tensor within the element bound, at most 42.5 MB (an x of
# 64 samples at start layer 7: 288 x 24 x 24 x 64 F32), so a single malloc
# over 256 MB (six times that) is the reader allocating past its bound; the
# whole process, with AddressSanitizer's shadow and quarantine (256 MB) on top
# of a few such tensors, stays well under 1024 MB. Other targets: libFuzzer's
# defaults (2048 MB).
limits_of() {
  case "$1" in
    pickle) echo "-malloc_limit_mb=256 -rss_limit_mb=1024" ;;
    *) echo "" ;;
  esac
}

short_run() {
  local seconds=$1 target scratch
  for target in $(cargo fuzz list); do
    scratch=$(mktemp -d)
    # shellcheck disable=SC2046 # the limits are separate words
    if ! cargo fuzz run "$target" "$scratch" "corpus/$target" -- -max_total_time="$seconds" -max_len=$MAX_LEN \
      $(limits_of "$target") >"$scratch.log" 2>&1; then
      tail -n 40 "$scratch.log"
      echo "[fuzz] $target failed: see the crash input in fuzz/artifacts/$target"
      exit 1
    fi
    echo "[fuzz] $target: $(grep -E '^Done' "$scratch.log")"
    rm -rf "$scratch" "$scratch.log"
  done
}

# One target for SECONDS in fork mode; prints its figures, returns 1 when
# anything crashed or ran out of memory.
long_run() {
  local target=$1 seconds=$2 scratch log status runs cov crashes ooms timeouts inputs
  scratch=$(mktemp -d)
  log="$scratch.log"
  # shellcheck disable=SC2046 # the limits are separate words
  cargo fuzz run "$target" "$scratch" "corpus/$target" -- -fork=1 -ignore_crashes=1 -ignore_ooms=1 \
    -ignore_timeouts=1 -max_total_time="$seconds" -max_len=$MAX_LEN $(limits_of "$target") >"$log" 2>&1 || true
  # Fork mode's status lines: "#RUNS: cov: EDGES ft: .. corp: .. exec/s: .. oom/timeout/crash: O/T/C time: ..".
  status=$(grep -E '^#[0-9]+: cov: ' "$log" | tail -n 1 || true)
  if [ -z "$status" ]; then
    tail -n 40 "$log"
    echo "[fuzz] $target: no status line from libFuzzer (log above)"
    return 1
  fi
  runs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$status")
  cov=$(sed -E 's/.* cov: ([0-9]+) .*/\1/' <<<"$status")
  read -r ooms timeouts crashes < <(sed -E 's/.*oom\/timeout\/crash: ([0-9]+)\/([0-9]+)\/([0-9]+).*/\1 \2 \3/' <<<"$status")
  cp -n "$scratch"/* "corpus/$target"/ 2>/dev/null || true
  cargo fuzz cmin "$target" "corpus/$target" -- -max_len=$MAX_LEN $(limits_of "$target") >"$scratch.cmin.log" 2>&1 \
    || { tail -n 20 "$scratch.cmin.log"; echo "[fuzz] $target: cmin failed"; return 1; }
  inputs=$(find "corpus/$target" -type f | wc -l)
  echo "[fuzz] $target: $runs runs in ${seconds} s, crashes $crashes, OOMs $ooms, timeouts $timeouts," \
    "coverage $cov edges, corpus after cmin $inputs inputs ($(du -sh "corpus/$target" | cut -f1)), limits: $(limits_of "$target" || true)"
  rm -rf "$scratch" "$log" "$scratch.cmin.log"
  if [ "$crashes" != 0 ] || [ "$ooms" != 0 ]; then
    echo "[fuzz] $target: the inputs are in fuzz/artifacts/$target"
    return 1
  fi
}

if [ "${1:-}" = "--long" ]; then
  seconds=${2:-600}
  targets=${3:-$(cargo fuzz list)}
  failed=0
  for target in $targets; do
    long_run "$target" "$seconds" || failed=1
  done
  exit $failed
fi
short_run "${1:-10}"
