# syntax=docker/dockerfile:1
# Container image of the analytics service (used by docker-compose.yml).
#   docker build -t analytics .
#   docker run --rm analytics --help

# ---- build ------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# rdkafka builds the bundled librdkafka (C, via its configure script): the
# rust:*-bookworm image already has gcc, make, perl, zlib and OpenSSL
# headers (libssl-dev, for rdkafka's `ssl` feature and PostgreSQL TLS).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin analytics \
 && install -D -m 0755 target/release/analytics /out/analytics

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin analytics
COPY --from=build /out/analytics /usr/local/bin/analytics
COPY config/config.example.yaml /etc/analytics/config.yaml
USER analytics
# API, Prometheus metrics, health
EXPOSE 9097 9098 9099
ENTRYPOINT ["/usr/local/bin/analytics"]
CMD ["--config", "/etc/analytics/config.yaml", "run"]
