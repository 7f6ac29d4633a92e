# rabbitmq: Debian's rabbitmq-server package (3.10 in bookworm, with quorum
# queues and their per-message TTL) on the project's Debian base, for the
# three-node cluster of example/compose/cluster.yaml where no registry
# supplies rabbitmq's own images. Build from the repository root:
#   docker build -f docker/rabbitmq.Dockerfile -t dnet/rabbitmq:3.10-bookworm docker/
# Each node is configured by its environment (RABBITMQ_NODENAME,
# RABBITMQ_NODE_PORT, RABBITMQ_DIST_PORT, RABBITMQ_CONFIG_FILE) and a shared
# Erlang cookie; the package's server switches to its `rabbitmq` user.
# The runtime base: Debian's image where a registry supplies it; `make
# images` passes the one it made from Debian's packages when none does
# (scripts/base_image.sh, tagged under the project's name).
ARG BASE=debian:bookworm-slim
# hadolint ignore=DL3006
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/*
EXPOSE 5672 25672
CMD ["rabbitmq-server"]
