# transmission-unit: no libtorch, run as a non-root user. Build from the
# repository root:
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/transmission-unit.Dockerfile -t dnet/transmission-unit:0.1.0 .
# Without a registry (`make images`, scripts/images.sh): BINARIES=host takes
# the binary built on the host, from a staged context; the runtime stage is
# the same text either way.
ARG BINARIES=build
# The runtime base: Debian's image where a registry supplies it; `make
# images` passes the one it made from Debian's packages when none does
# (scripts/base_image.sh, tagged under the project's name).
ARG BASE=debian:bookworm-slim

FROM rust:1.89-slim-bookworm AS build
WORKDIR /src
COPY . .
# Only this package: it does not depend on tch, so no libtorch is needed to build it.
RUN cargo build --release --locked -p transmission-unit \
    && strip target/release/transmission-unit

# The host's build, staged by scripts/images.sh at the paths the build stage uses.
FROM scratch AS host
COPY . /

# hadolint ignore=DL3006
FROM ${BINARIES} AS binaries

# hadolint ignore=DL3006
FROM ${BASE}
COPY --from=binaries /src/target/release/transmission-unit /usr/local/bin/transmission-unit
# The public CAs, so that amqps:// to a publicly signed broker works without
# --amqp-ca (rustls-native-certs reads this file).
COPY --from=binaries /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN useradd --system --uid 65532 --no-create-home dnet
USER 65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/transmission-unit"]
