# syntax=docker/dockerfile:1
# Build: release binary with LTO (profile in Cargo.toml).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin qwen-proxy

# Run: slim Debian, non-root, no shell tools needed beyond the health probe.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home qwen
COPY --from=build /src/target/release/qwen-proxy /usr/local/bin/qwen-proxy
USER qwen
ENV HOST=0.0.0.0 PORT=3000
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1
ENTRYPOINT ["/usr/local/bin/qwen-proxy"]
CMD ["serve"]
