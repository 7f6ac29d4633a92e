# test-unit: the benchmark client; links libtorch for its local layers (-e > 0).
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/test-unit.Dockerfile -t dnet/test-unit:0.1.0 .
# Without a registry (`make images`, scripts/images.sh): BINARIES=host, as
# for the computation unit; the runtime stage is the same text either way.
ARG BINARIES=build
# The runtime base: Debian's image where a registry supplies it; `make
# images` passes the one it made from Debian's packages when none does
# (scripts/base_image.sh, tagged under the project's name).
ARG BASE=debian:bookworm-slim

FROM rust:1.89-slim-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv g++ libfontconfig1-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.11.0
ENV PATH=/opt/venv/bin:$PATH LIBTORCH_USE_PYTORCH=1
WORKDIR /src
COPY . .
# /opt/closure mirrors what the runtime image holds of the venv: exactly
# the libraries the binary loads (docker/closure.sh).
RUN cargo build --release --locked -p test-unit \
    && strip target/release/test-unit \
    && site=/opt/venv/lib/python3.11/site-packages \
    && docker/closure.sh "$site" "/opt/closure$site" target/release/test-unit

# The host's build, staged by scripts/images.sh at the paths the build stage uses.
FROM scratch AS host
COPY . /

# hadolint ignore=DL3006
FROM ${BINARIES} AS binaries

# hadolint ignore=DL3006
FROM ${BASE}
# libtorch first, as in the computation unit's image: the same layers, stored once.
COPY --from=binaries /opt/closure/ /
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libfontconfig1 fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home dnet
COPY --from=binaries /src/target/release/test-unit /usr/local/bin/test-unit
USER 10001
ENTRYPOINT ["/usr/local/bin/test-unit"]
