#!/usr/bin/env bash
# Makes sure a Docker engine answers: leaves a running one alone, else starts
# dockerd in the background (as root) and waits until it answers. When it
# cannot start (a kernel without the features it needs), says why and fails:
# the container test never skips.
#   scripts/dockerd.sh
set -euo pipefail
DOCKER=${DNET_DOCKER:-/usr/bin/docker}
LOG=${DNET_CACHE:-$HOME/.cache/dnet}/dockerd.log
say() { echo "[dockerd] $*" >&2; }

answers() { "$DOCKER" info >/dev/null 2>&1; }

answers && exit 0
command -v dockerd >/dev/null || { say "dockerd is missing (scripts/setup.sh docker)"; exit 1; }
if pgrep -x dockerd >/dev/null; then
  say "a dockerd is running but does not answer yet; waiting for it"
else
  mkdir -p "$(dirname "$LOG")"
  say "starting dockerd (log: $LOG)"
  # setsid: the engine outlives this script and the make that ran it.
  # --bridge=none: DNet's containers use the host's network only, so no
  # bridge (and no private address range) is set up.
  setsid dockerd --bridge=none >"$LOG" 2>&1 </dev/null &
fi
for _ in $(seq 1 60); do
  answers && { say "dockerd answers"; exit 0; }
  pgrep -x dockerd >/dev/null || break
  sleep 1
done
say "dockerd did not start; the end of its log:"
tail -n 20 "$LOG" >&2 || true
exit 1
