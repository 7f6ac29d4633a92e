#!/usr/bin/env bash
# The Python client (clients/python), as a user installs it: `pip install`
# into a fresh venv, its tests without a unit, then its tests and README
# example against the demo's cascade 8 -> 12 -> 16 (scripts/cascade.sh,
# broker layout, the machine's RabbitMQ). Part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${DNET_CACHE:-$HOME/.cache/dnet}
VENV=$CACHE/python-client-venv
say() { echo "[python-client] $*" >&2; }

rm -rf "$VENV"
python3 -m venv "$VENV"
say "pip install ./clients/python[test] into a fresh venv ($VENV)"
"$VENV/bin/pip" install -q --disable-pip-version-check "./clients/python[test]"
rm -rf clients/python/build clients/python/src/*.egg-info
# The units export their spans to the tests' OTLP receiver (tests/conftest.py).
DNET_TEST_OTLP_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export DNET_TEST_OTLP_PORT OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$DNET_TEST_OTLP_PORT
DNET_LAYOUT=broker scripts/cascade.sh sh -c \
  "'$VENV/bin/python' -m pytest -q -p no:cacheprovider clients/python/tests && '$VENV/bin/python' clients/python/example.py"
