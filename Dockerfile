# syntax=docker/dockerfile:1
# Build: release binary with LTO (profile in Cargo.toml).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares [[bench]] targets: cargo refuses the manifest when their files are
# missing, even to build only the binary.
COPY benches ./benches
# The crate registry and target/ are BuildKit cache mounts, kept between builds: after a
# source edit only this crate is recompiled, not its dependencies. Cache mounts are not part
# of the image, so the binary is copied out of target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin qwen-proxy \
 && cp target/release/qwen-proxy /usr/local/bin/qwen-proxy

# Run: slim Debian, non-root, no shell tools needed beyond the health probe.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home qwen
COPY --from=build /usr/local/bin/qwen-proxy /usr/local/bin/qwen-proxy
USER qwen
ENV HOST=0.0.0.0 PORT=3000
EXPOSE 3000
# Healthy while /health answers 2xx: `ok`, and `degraded` too (200: upstream or Redis
# unreachable, which a restart would not cure). From SIGTERM on, the draining proxy answers
# 503 `draining`: `curl -f` exits 22 on any status >= 400, so a draining (or dead) instance
# is reported unhealthy. `|| exit 1` maps every curl failure to Docker's "unhealthy" exit
# code (2 is reserved). /health may wait up to 5 s for its upstream probe, hence a 10 s
# timeout, with curl's own limit below it.
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
  CMD curl -fsS --max-time 8 "http://127.0.0.1:${PORT}/health" || exit 1
ENTRYPOINT ["/usr/local/bin/qwen-proxy"]
CMD ["serve"]
