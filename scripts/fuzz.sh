#!/usr/bin/env bash
# Runs each cargo fuzz target for SECONDS on the committed corpus (new inputs
# go to a temporary folder, so the tree stays clean). `make test` runs it short;
# commit a longer run's minimised corpus by hand (fuzz/README.md).
#   scripts/fuzz.sh SECONDS
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-10}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo fuzz needs -Z flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
for target in codec request pickle; do
  scratch=$(mktemp -d)
  if ! cargo fuzz run "$target" "$scratch" "corpus/$target" -- -max_total_time="$SECONDS_EACH" -max_len=65536 \
    >"$scratch.log" 2>&1; then
    tail -n 40 "$scratch.log"
    echo "[fuzz] $target failed: see the crash input in fuzz/artifacts/$target"
    exit 1
  fi
  echo "[fuzz] $target: $(grep -E '^Done' "$scratch.log")"
  rm -rf "$scratch" "$scratch.log"
done
