#!/usr/bin/env bash
# Makes sure the demo model trained on scikit-learn's digits is in
# $DNET_CACHE/demo (scripts/train_demo.py: 12-15 minutes on 2 cores the
# first time), and prints its accuracy per exit on the test set.
#   scripts/trained_model.sh [--heads-only]
# --heads-only: the fast variant the tests use (random trunk, trained heads).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${DNET_CACHE:-$HOME/.cache/dnet}/demo
VENV=${DNET_VENV:-${DNET_CACHE:-$HOME/.cache/dnet}/venv}
name=digits
[ "${1:-}" = --heads-only ] && name=digits-heads
# One training at a time: test suites may ask for the model at once.
mkdir -p "$DEMO"
exec 9>"$DEMO/.train.lock"
flock 9
if [ ! -f "$DEMO/$name.safetensors" ]; then
  echo "[train] no $DEMO/$name.safetensors: training it (scripts/train_demo.py $*)"
  "$VENV/bin/python" scripts/train_demo.py --out "$DEMO" "$@"
fi
"$VENV/bin/python" - "$DEMO/$name-report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
test = report["accuracy"]["test"]
print(f"[train] {report['trained']}: {report['epochs']} epochs over {report['images']['train']} images "
      f"in {report['train_seconds'] / 60:.1f} min ({report['threads']} threads)")
print("[train] test accuracy per exit (" + str(report["images"]["test"]) + " images): "
      + ", ".join(f"{e + 1}: {a:.3f}" for e, a in enumerate(test)))
PY
