# computation-unit: built against the pinned PyTorch 2.11.0; the runtime image
# carries only libtorch's shared libraries. Weights are NOT in the image: mount
# them (see example/) and pass --weights /weights/model.safetensors.
#   TORCH_VARIANT=cpu    CPU-only wheels (amd64 and arm64)
#   TORCH_VARIANT=cu130  CUDA 13.0 wheels (amd64)
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/computation-unit.Dockerfile \
#     --build-arg TORCH_VARIANT=cpu -t dnet/computation-unit:0.1.0-cpu .
# Without a registry (`make images`, scripts/images.sh): BINARIES=host takes
# the binary built on the host and the project venv's libtorch (PyPI's wheel,
# which carries CUDA's libraries), staged at the paths the build stage uses;
# the runtime stage is the same text either way.
ARG TORCH_VARIANT=cpu
ARG BINARIES=build
# The runtime base: Debian's image where a registry supplies it; `make
# images` passes the one it made from Debian's packages when none does
# (scripts/base_image.sh, tagged under the project's name).
ARG BASE=debian:bookworm-slim

FROM rust:1.89-slim-bookworm AS build
ARG TORCH_VARIANT
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv g++ \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" torch==2.11.0
ENV PATH=/opt/venv/bin:$PATH LIBTORCH_USE_PYTORCH=1
WORKDIR /src
COPY . .
# /opt/closure mirrors what the runtime image holds of the venv: for the
# CPU variant exactly the libraries the binary loads (docker/closure.sh);
# for CUDA all of torch/lib and nvidia/, since CUDA opens some at run time.
RUN cargo build --release --locked -p computation-unit \
    && strip target/release/computation-unit \
    && site=/opt/venv/lib/python3.11/site-packages \
    && if [ "$TORCH_VARIANT" = cpu ]; then \
         docker/closure.sh "$site" "/opt/closure$site" target/release/computation-unit; \
       else \
         mkdir -p "/opt/closure$site" && cp -a "$site/torch" "$site/nvidia" "/opt/closure$site/"; \
       fi

# The host's build, staged by scripts/images.sh at the paths the build stage uses.
FROM scratch AS host
COPY . /

# hadolint ignore=DL3006
FROM ${BINARIES} AS binaries

# hadolint ignore=DL3006
FROM ${BASE}
# The binary's run-path points at torch/lib under /opt/venv: the libraries
# keep their paths there (/opt/closure mirrors them).
COPY --from=binaries /opt/closure/ /
COPY --from=binaries /src/target/release/computation-unit /usr/local/bin/computation-unit
RUN useradd --system --uid 10001 --no-create-home dnet
USER 10001
# A worker's metrics (9091 in example/: beside a transmission unit's 9090);
# a direct unit (`serve`): gRPC 8080 and metrics 9090.
EXPOSE 8080 9090 9091
ENTRYPOINT ["/usr/local/bin/computation-unit"]
