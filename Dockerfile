# syntax=docker/dockerfile:1
# Build stage: compile the release binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo ./.cargo
COPY src ./src
COPY config ./config
COPY migrations ./migrations
RUN cargo build --release --locked --bin mume-gateway

# Runtime stage: a slim image with the binary, its default config and curl
# for the health check, running as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin mume \
 && install -d -o mume -g mume /var/lib/mume
COPY --from=build /src/target/release/mume-gateway /usr/local/bin/mume-gateway
COPY config/gateway.toml /etc/mume/gateway.toml
USER mume
# The default store (`mume-gateway.db`, a path relative to the working
# directory) lives here: mount a volume to keep keys and credits across
# container restarts.
WORKDIR /var/lib/mume
VOLUME /var/lib/mume
# Listen on every interface inside the container. Mount your own config
# over /etc/mume/gateway.toml (or point MUME_CONFIG elsewhere).
ENV MUME_LISTEN=0.0.0.0:8080 \
    MUME_CONFIG=/etc/mume/gateway.toml \
    MUME_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["/usr/local/bin/mume-gateway"]
CMD ["serve"]
