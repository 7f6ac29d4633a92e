#!/usr/bin/env bash
# `make images`: builds every image the examples use and tags it as their
# manifests name it (docker/README.md lists them).
#   scripts/images.sh [build|host] [--cuda] [--readme]
# build: the Dockerfiles as a user runs them (Rust and PyTorch inside the
#   image build), where a registry supplies the build images.
# host (without a registry, as in CI): the programs built here (`make
#   build`) and the project venv's libtorch, staged at the paths the build
#   stage lays them out, on the base scripts/base_image.sh names (Debian's
#   image, or one made from Debian's packages when none can be pulled).
#   The venv holds PyPI's wheel, linked with CUDA: the CPU images take the
#   binaries with their libtorch_cuda dependency removed (a CPU-only link:
#   CUDA's kernels register from that library alone) and exactly the
#   libraries those load (docker/closure.sh).
# --cuda: also dnet/computation-unit:0.1.0-cu130, with CUDA's libraries (about
#   4 GB; `make images-cuda`).
# --readme: rewrite docker/README.md's table of sizes and contents from
#   this build (`make images` does).
# Either way the runtime stages are the same text; BuildKit (Debian's docker
# client with DOCKER_BUILDKIT=1) builds only the stage the runtime copies from.
set -euo pipefail
# A failure inside $(...) (staging a context) stops the script too.
shopt -s inherit_errexit
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

mode='' cuda='' readme=''
for arg in "$@"; do
  case "$arg" in
    build | host) mode=$arg ;;
    --cuda) cuda=1 ;;
    --readme) readme=1 ;;
    *) say "unknown argument $arg (usage: scripts/images.sh [build|host] [--cuda] [--readme])"; exit 2 ;;
  esac
done
if [ -z "$mode" ]; then
  if timeout 60 "$DOCKER" pull -q rust:1.89-slim-bookworm >/dev/null 2>&1; then mode=build; else mode=host; fi
fi
BASE=$(scripts/base_image.sh)

BUILT=()
TAGS=()
build() { # NAME TAG CONTEXT [docker build args...]
  local name=$1 tag=$2 context=$3
  shift 3
  local started=$SECONDS
  "$DOCKER" build -q --network host -f "docker/$name.Dockerfile" --build-arg "BINARIES=$mode" \
    --build-arg "BASE=$BASE" -t "$tag" "$@" "$context" >/dev/null
  local size
  size=$("$DOCKER" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}')
  say "$tag: $size in $((SECONDS - started)) s ($mode)"
  BUILT+=("| \`$tag\` | $size | $((SECONDS - started)) s |")
  TAGS+=("$tag")
}

# A staged context: the programs' binaries where the build stage puts them
# (run-path set where the image keeps libtorch), the CA bundle and, for
# those that link it, libtorch under /opt/closure as the build stage lays it
# out (hard links, no copy). TORCH is none, cpu (the binaries' CPU-only
# link and their closure) or cuda (all of torch/lib and nvidia/). One
# context holds both programs that link libtorch, so BuildKit takes it in once.
stage() { # NAME TORCH PROGRAM...
  local dir=$STAGE/$1 torch=$2
  shift 2
  local site=$VENV/lib/python3.11/site-packages closure=$dir/opt/closure/$IMAGE_TORCH
  rm -rf "$dir" && mkdir -p "$dir/src/target/release" "$dir/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
  if [ "$torch" != none ]; then
    [ -d "$site/torch/lib" ] || { say "no libtorch in $site (scripts/setup.sh torch)"; exit 1; }
  fi
  local program staged=()
  for program in "$@"; do
    cp "$BIN/$program" "$dir/src/target/release/$program"
    strip "$dir/src/target/release/$program"
    if [ "$torch" = cpu ]; then
      patchelf --remove-needed libtorch_cuda.so "$dir/src/target/release/$program"
    fi
    staged+=("$dir/src/target/release/$program")
  done
  case "$torch" in
    cpu) docker/closure.sh "$site" "$closure" "${staged[@]}" ;;
    cuda)
      mkdir -p "$closure/torch"
      cp -al "$site/torch/lib" "$closure/torch/lib"
      if [ -d "$site/nvidia" ]; then cp -al "$site/nvidia" "$closure/nvidia"; fi
      ;;
  esac
  if [ "$torch" != none ]; then
    for program in "${staged[@]}"; do patchelf --set-rpath "/$IMAGE_TORCH/torch/lib" "$program"; done
  fi
  echo "$dir"
}

# The weights image's context and tag, which says what it holds:
# docker/model.safetensors under DNET_WEIGHTS_TAG (e.g. epoch53, the
# original's trained model converted) or else its content's hash; without
# that file the random weights of seed 1, as :random-seed1.
# What an image holds besides its base, read from the image itself: its
# programs, the libraries under /opt, the weights.
contents() { # TAG
  "$DOCKER" run --rm --network none --entrypoint /bin/sh "$1" -c \
    'find /usr/local/bin /opt /model.safetensors -type f -exec du -k {} + 2>/dev/null' |
    awk '
      function mb(k) { return sprintf("%.0f MB", k / 1024) }
      $2 ~ /^\/usr\/local\/bin\// { n = split($2, p, "/"); programs = programs sep p[n] " (" mb($1) ")"; sep = ", " }
      $2 ~ /^\/opt\// {
        n = split($2, p, "/"); libraries++; library_kb += $1
        if (libraries <= 6) { names = names lsep p[n]; lsep = ", " }
      }
      $2 == "/model.safetensors" { weights = "weights " mb($1) }
      END {
        out = programs
        if (libraries > 6) names = names " and " libraries - 6 " more"
        if (libraries) out = out "; " libraries " files under /opt, " mb(library_kb) ": " names
        if (weights) out = out (out ? "; " : "") weights
        print (out ? out : "Debian packages only (see its Dockerfile)")
      }'
}

weights() { # prints: CONTEXT TAG ORIGIN
  local dir=$STAGE/weights
  rm -rf "$dir" && mkdir -p "$dir"
  if [ -f docker/model.safetensors ]; then
    cp -l docker/model.safetensors "$dir/" 2>/dev/null || cp docker/model.safetensors "$dir/"
    local tag=${DNET_WEIGHTS_TAG:-sha256-$(sha256sum docker/model.safetensors | cut -c1-12)}
    echo "$dir" "$tag" "trained: docker/model.safetensors"
  else
    say "no docker/model.safetensors: the weights image carries the random weights of seed 1, tagged :random-seed1"
    "$BIN/computation-unit" export-weights --random-weights 1 --output "$dir/model.safetensors" >/dev/null
    echo "$dir" random-seed1 "random, seed 1"
  fi
}

if [ "$mode" = host ]; then
  command -v patchelf >/dev/null || { say "patchelf is missing (apt-get install patchelf)"; exit 1; }
  for program in transmission-unit computation-unit test-unit; do
    [ -x "$BIN/$program" ] || { say "$BIN/$program is not built (make build)"; exit 1; }
  done
  plain=$(stage plain none transmission-unit)
  build transmission-unit dnet/transmission-unit:0.1.0 "$plain"
  torch=$(stage torch-cpu cpu computation-unit test-unit)
  build computation-unit dnet/computation-unit:0.1.0-cpu "$torch"
  build test-unit dnet/test-unit:0.1.0 "$torch"
  if [ -n "$cuda" ]; then
    cuda_context=$(stage torch-cuda cuda computation-unit)
    build computation-unit dnet/computation-unit:0.1.0-cu130 "$cuda_context"
  fi
else
  build transmission-unit dnet/transmission-unit:0.1.0 .
  build computation-unit dnet/computation-unit:0.1.0-cpu . --build-arg TORCH_VARIANT=cpu
  build test-unit dnet/test-unit:0.1.0 .
  if [ -n "$cuda" ]; then
    build computation-unit dnet/computation-unit:0.1.0-cu130 . --build-arg TORCH_VARIANT=cu130
  fi
fi
# Debian's RabbitMQ, for the three-node cluster of example/compose/cluster.yaml.
mkdir -p "$STAGE/rabbitmq"
build rabbitmq dnet/rabbitmq:3.10-bookworm "$STAGE/rabbitmq"
weights_line=$(weights)
read -r context weights_tag origin <<<"$weights_line"
build weights "dnet/inception-weights:$weights_tag" "$context" --build-arg "WEIGHTS=$origin"
# Layers shared between images (libtorch, the base) are stored once.
table() {
  echo "| image ($mode path, $(date -u +%F)) | size | built in | what it adds to its base ($BASE) |"
  echo "|---|---|---|---|"
  local i
  for i in "${!TAGS[@]}"; do
    echo "${BUILT[$i]} $(contents "${TAGS[$i]}") |"
  done
}
table
if [ -n "$readme" ]; then
  python3 scripts/replace_section.py docker/README.md images "$(table)"
  say "docker/README.md: table of images rewritten"
fi
echo "[images] all images together: $("$DOCKER" system df --format '{{if eq .Type "Images"}}{{.Size}}{{end}}' | tr -d '\n') on disk" >&2
