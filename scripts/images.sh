#!/usr/bin/env bash
# `make images`: builds every image the examples use and tags it as their
# manifests name it (docker/README.md lists them).
#   scripts/images.sh [build|host]
# build: the Dockerfiles as a user runs them (Rust and PyTorch inside the
#   image build), where a registry supplies the build images.
# host (without a registry, as in CI): the programs built here (`make
#   build`) and the project venv's libtorch (PyPI's wheel, with CUDA's
#   libraries: larger than the CPU wheel index's), staged at the paths the
#   build stage lays them out, on a debian:bookworm-slim made from Debian's
#   packages when none can be pulled (scripts/base_image.sh).
# Either way the runtime stages are the same text; BuildKit (Debian's docker
# client with DOCKER_BUILDKIT=1) builds only the stage the runtime copies from.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DNET_DOCKER:-/usr/bin/docker}
export DOCKER_BUILDKIT=1
BIN=${DNET_BIN_DIR:-target/release}
CACHE=${DNET_CACHE:-$HOME/.cache/dnet}
VENV=${DNET_VENV:-$CACHE/venv}
STAGE=$CACHE/images/stage
# Where the images put libtorch: the in-image build's venv.
IMAGE_TORCH=opt/venv/lib/python3.11/site-packages
say() { echo "[images] $*" >&2; }

mode=${1:-}
if [ -z "$mode" ]; then
  if timeout 60 "$DOCKER" pull -q rust:1.89-slim-bookworm >/dev/null 2>&1; then mode=build; else mode=host; fi
fi
scripts/base_image.sh

BUILT=()
build() { # NAME TAG CONTEXT [docker build args...]
  local name=$1 tag=$2 context=$3
  shift 3
  local started=$SECONDS
  "$DOCKER" build -q --network host -f "docker/$name.Dockerfile" --build-arg "BINARIES=$mode" -t "$tag" "$@" "$context" >/dev/null
  local size
  size=$("$DOCKER" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}')
  say "$tag: $size in $((SECONDS - started)) s ($mode)"
  BUILT+=("| \`$tag\` | $size | $((SECONDS - started)) s |")
}

# A staged context: the programs' binaries where the build stage puts them
# (run-path set where the image keeps libtorch), the CA bundle and, for
# those that link it, libtorch (hard links, no copy). One context holds both
# programs that link libtorch, so BuildKit takes it in once.
stage() { # NAME WITH_TORCH PROGRAM...
  local dir=$STAGE/$1 torch=$2
  shift 2
  rm -rf "$dir" && mkdir -p "$dir/src/target/release" "$dir/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
  if [ "$torch" = torch ]; then
    local site=$VENV/lib/python3.11/site-packages
    [ -d "$site/torch/lib" ] || { say "no libtorch in $site (scripts/setup.sh torch)"; exit 1; }
    mkdir -p "$dir/$IMAGE_TORCH/torch"
    cp -al "$site/torch/lib" "$dir/$IMAGE_TORCH/torch/lib"
    if [ -d "$site/nvidia" ]; then cp -al "$site/nvidia" "$dir/$IMAGE_TORCH/nvidia"; else mkdir -p "$dir/$IMAGE_TORCH/nvidia"; fi
  fi
  local program
  for program in "$@"; do
    cp "$BIN/$program" "$dir/src/target/release/$program"
    strip "$dir/src/target/release/$program"
    if [ "$torch" = torch ]; then
      patchelf --set-rpath "/$IMAGE_TORCH/torch/lib" "$dir/src/target/release/$program"
    fi
  done
  echo "$dir"
}

weights() { # the weights image's context: docker/model.safetensors, else random weights
  local dir=$STAGE/weights
  rm -rf "$dir" && mkdir -p "$dir"
  if [ -f docker/model.safetensors ]; then
    cp -l docker/model.safetensors "$dir/" 2>/dev/null || cp docker/model.safetensors "$dir/"
    echo "$dir" "trained: docker/model.safetensors"
  else
    say "no docker/model.safetensors: the weights image carries the random weights of seed 1 (a stand-in, labelled so)"
    "$BIN/computation-unit" export-weights --random-weights 1 --output "$dir/model.safetensors" >/dev/null
    echo "$dir" "random, seed 1"
  fi
}

if [ "$mode" = host ]; then
  command -v patchelf >/dev/null || { say "patchelf is missing (apt-get install patchelf)"; exit 1; }
  for program in transmission-unit computation-unit test-unit; do
    [ -x "$BIN/$program" ] || { say "$BIN/$program is not built (make build)"; exit 1; }
  done
  build transmission-unit dnet/transmission-unit:0.1.0 "$(stage plain none transmission-unit)"
  torch=$(stage torch torch computation-unit test-unit)
  build computation-unit dnet/computation-unit:0.1.0-cpu "$torch"
  build test-unit dnet/test-unit:0.1.0 "$torch"
else
  build transmission-unit dnet/transmission-unit:0.1.0 .
  build computation-unit dnet/computation-unit:0.1.0-cpu . --build-arg TORCH_VARIANT=cpu
  build test-unit dnet/test-unit:0.1.0 .
fi
# Debian's RabbitMQ, for the three-node cluster of example/compose/cluster.yaml.
mkdir -p "$STAGE/rabbitmq"
build rabbitmq dnet/rabbitmq:3.10-bookworm "$STAGE/rabbitmq"
read -r context origin < <(weights)
build weights dnet/inception-weights:epoch53 "$context" --build-arg "WEIGHTS=$origin"
# Layers shared between images (libtorch, the base) are stored once.
echo "| image ($mode path, $(date -u +%F)) | size | built in |"
echo "|---|---|---|"
printf '%s\n' "${BUILT[@]}"
echo "[images] all images together: $("$DOCKER" system df --format '{{if eq .Type "Images"}}{{.Size}}{{end}}' | tr -d '\n') on disk" >&2
