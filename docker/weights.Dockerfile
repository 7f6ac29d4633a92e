# The model weights in an image of their own, copied into an emptyDir by an
# initContainer (see example/): code and weights ship separately.
#   cp /path/to/model.safetensors docker/model.safetensors
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/weights.Dockerfile \
#     --build-arg WEIGHTS="trained, epoch 53" -t dnet/inception-weights:epoch53 docker/
# The initContainer runs `cp`: the same base as the units' images, so the
# weights add one layer to what a node already holds.
# The runtime base: Debian's image where a registry supplies it; `make
# images` passes the one it made from Debian's packages when none does
# (scripts/base_image.sh, tagged under the project's name).
ARG BASE=debian:bookworm-slim
# hadolint ignore=DL3006
FROM ${BASE}
# Where the weights came from (`make images` says "random, seed 1" when no
# trained file is at docker/model.safetensors).
ARG WEIGHTS=unspecified
LABEL org.dnet.weights="${WEIGHTS}"
COPY model.safetensors /model.safetensors
# Where the initContainer copies to, owned by its user: a fresh Docker volume
# mounted there takes this ownership (docker compose, example/compose/); a
# pod's emptyDir is writable by any user anyway.
RUN install -d -o 65532 -g 65532 /weights
USER 65532:65532
