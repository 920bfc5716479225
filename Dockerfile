# keygate container image: a Rust build stage, then a small Debian runtime with the binary, a
# non-root user and deploy/keygate.container.yaml as /etc/keygate/keygate.yaml.
#
#   docker build -t keygate .
#   docker run -e KEYGATE_PEPPER -e KEYGATE_ADMIN_TOKEN -p 8080:8080 -p 127.0.0.1:9901:9901 keygate
#
# No secret is in the image: KEYGATE_PEPPER and KEYGATE_ADMIN_TOKEN come from the environment
# (the gateway refuses to start without them). README "Deploy" lists the other variables.
#
# RUST_IMAGE is the build stage's toolchain: any Debian bookworm image with cargo, a C compiler
# (ring and mimalloc build C) and ca-certificates. scripts/image-test makes one from Debian's
# rustc-web where no registry is reachable. The build stage keeps cargo's download cache and
# target directory at fixed paths, /usr/local/cargo/registry and /build/target, so that a
# builder may mount caches there (podman build -v …; scripts/image-test does).
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
ENV CARGO_HOME=/usr/local/cargo \
    CARGO_TARGET_DIR=/build/target \
    CARGO_INCREMENTAL=0 \
    CARGO_TERM_COLOR=never
WORKDIR /build/src
COPY . .
# update-ca-certificates takes in CAs a builder mounts at /usr/local/share/ca-certificates (a
# TLS-intercepting network's; this stage only, never the runtime). The binary is copied out of
# the target directory, which may be a mounted cache rather than part of this layer, without its
# line tables (75 MB to 15 MB; symbols stay, so backtraces still name functions).
RUN update-ca-certificates >/dev/null \
    && cargo build --release --locked --bin keygate \
    && mkdir -p /out \
    && strip --strip-debug -o /out/keygate /build/target/release/keygate

FROM ${RUNTIME_IMAGE}
# Nothing is installed: the binary needs only glibc and libgcc_s, which the base has, and no HTTP
# client (the probes are GETs from the orchestrator; see HEALTHCHECK). Upstreams are plain HTTP
# today; add ca-certificates here when HTTPS upstreams with the system roots arrive.
RUN groupadd --system --gid 10001 keygate \
    && useradd --system --uid 10001 --gid keygate --home-dir /var/lib/keygate \
        --shell /usr/sbin/nologin keygate \
    && install -d -o keygate -g keygate -m 0750 /var/lib/keygate
COPY --from=build /out/keygate /usr/local/bin/keygate
COPY deploy/keygate.container.yaml /etc/keygate/keygate.yaml
# The embedded store's file (store.backend: embedded); unused with Redis, so a read-only root
# filesystem needs no writable mount then.
VOLUME ["/var/lib/keygate"]
WORKDIR /var/lib/keygate
# A numeric user, so that runAsNonRoot can verify it without resolving names.
USER 10001:10001
# 8080: the proxy (data plane). 9901: admin API, dashboard, /metrics, /healthz, /readyz.
EXPOSE 8080 9901
# keygate drains on SIGTERM (readiness 503 first, then in-flight requests up to
# shutdown_timeout), also as PID 1. Give `docker stop -t` / terminationGracePeriodSeconds more
# than shutdown_delay + shutdown_timeout.
STOPSIGNAL SIGTERM
# Liveness (/healthz) through bash's /dev/tcp, as the image has no HTTP client; it follows
# KEYGATE_ADMIN_LISTEN's port. Liveness rather than /readyz: a Redis outage must not mark the
# container for replacement. Kubernetes ignores HEALTHCHECK: the manifests in deploy/kubernetes
# probe /healthz and /readyz themselves.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "a=${KEYGATE_ADMIN_LISTEN:-0.0.0.0:9901}; exec 3<>/dev/tcp/127.0.0.1/${a##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 3 _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve", "--config", "/etc/keygate/keygate.yaml"]
