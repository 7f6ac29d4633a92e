# transmission-unit: a static (musl) binary on an empty image, run as non-root.
# No libtorch. Build from the repository root:
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/transmission-unit.Dockerfile -t dnet/transmission-unit:0.1.0 .
FROM rust:1.89-alpine3.22 AS build
# hadolint ignore=DL3018
RUN apk add --no-cache musl-dev protobuf-dev ca-certificates
# Alpine's protoc: the vendored one is built for glibc.
ENV PROTOC=/usr/bin/protoc
WORKDIR /src
COPY . .
# Only this package: it does not depend on tch, so no libtorch is needed to build it.
RUN cargo build --release --locked -p transmission-unit \
    && strip target/release/transmission-unit

FROM scratch
COPY --from=build /src/target/release/transmission-unit /transmission-unit
# The public CAs, so that amqps:// to a publicly signed broker works without
# --amqp-ca (rustls-native-certs reads this file).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# Any non-root uid: the binary needs no home, no shell and no files.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/transmission-unit"]
