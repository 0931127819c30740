# syntax=docker/dockerfile:1
#
# Stackline image: one binary for both roles.
#   gateway (default): runs as the non-root user `stackline` (uid/gid 10001) with
#                      /etc/stackline/gateway.yaml, which needs TLS and token files
#                      (scripts/gen-secrets.sh): mount them and set STACKLINE_TLS_DIR
#                      and STACKLINE_TOKEN_FILE, as the Kubernetes manifests do.
#   agent:             the DaemonSet (deploy/kubernetes/agent-daemonset.yaml) overrides
#                      the user to root (runAsUser: 0) and adds only the capabilities
#                      eBPF sampling needs; the args switch to /etc/stackline/agent.yaml.
#
# Build: docker build -t stackline .   (BuildKit, for the cache mounts)

############################ build ############################
# Stable Rust is enough: the eBPF object is prebuilt and committed under
# ebpf/prebuilt, so no nightly, LLVM, bpf-linker or protoc is needed here.
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build

# Only what the build reads: the manifest (its [[bench]] targets must exist), the
# sources, config/default.yaml (include_str!), the eBPF object (include_bytes!) and
# ebpf-common, the crate of types and unwind rules the object and src/ share; testkit
# only because the workspace names it (cargo loads every member; nothing of it is built).
COPY Cargo.toml Cargo.lock ./
COPY ebpf-common ./ebpf-common
COPY testkit ./testkit
COPY src ./src
COPY benches ./benches
COPY config ./config
COPY ebpf/prebuilt ./ebpf/prebuilt

# The binary is copied out of target/ inside the same step: target/ is a cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/stackline /out/stackline

############################ runtime ############################
FROM debian:bookworm-slim

# ca-certificates only: the OTLP exporter verifies TLS servers against the system roots.
# Left unpinned on purpose: Debian removes superseded versions from its mirrors on
# every security update, so a pinned version would break the build; rebuild the
# image to pick up new roots.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Fixed ids so Kubernetes (runAsUser/fsGroup 10001) and host volumes agree.
# /var/lib/stackline is the working directory: the gateway's ./stackline-out/ and
# its persistent queue live there (mount a volume on it; see the gateway Deployment).
RUN groupadd --system --gid 10001 stackline \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/stackline --shell /usr/sbin/nologin stackline \
    && install -d -o 10001 -g 10001 -m 0755 /var/lib/stackline

COPY --from=builder /out/stackline /usr/local/bin/stackline
COPY config/agent.yaml config/gateway.yaml config/default.yaml /etc/stackline/

WORKDIR /var/lib/stackline

# The `stackline` user, numeric so runAsNonRoot can be checked without runAsUser.
# The agent DaemonSet overrides this with runAsUser: 0 plus a small capability set.
USER 10001:10001

# 4317 OTLP/gRPC, 4318 OTLP/HTTP (reserved: the shipped configs listen on gRPC only),
# 8888 /metrics and /health/{live,ready}.
EXPOSE 4317 4318 8888

ENTRYPOINT ["/usr/local/bin/stackline"]
CMD ["--config", "/etc/stackline/gateway.yaml"]
