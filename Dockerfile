# One image holding every Botticelli binary; the command picks the service:
#   docker run IMAGE btl-scheduler | btl-generator | btl-curator | btl-poster | btl ...
# Build stage: Debian bookworm with the -dev packages; run stage: bookworm-slim
# with only the runtime libraries, as the non-root user `btl`.

FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libnng-dev libmsgpack-dev libpq-dev \
      libcurl4-openssl-dev libyaml-dev libmicrohttpd-dev libjansson-dev libjwt-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY libshared libshared
COPY services services
COPY tools tools
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DBTL_SANITIZE=OFF \
 && cmake --build build -j"$(nproc)" --target btl-scheduler btl-generator btl-curator btl-poster btl \
 && install -m 0755 build/btl-scheduler build/btl-generator build/btl-curator build/btl-poster \
      build/btl /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libnng1 libmsgpackc2 libpq5 libcurl4 libyaml-0-2 libmicrohttpd12 libjansson4 libjwt0 \
      tzdata ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 btl \
 && useradd --system --uid 10001 --gid btl --home-dir /app --shell /usr/sbin/nologin btl
COPY --from=build /usr/local/bin/ /usr/local/bin/
WORKDIR /app
COPY migrations migrations
COPY config config
COPY proto proto
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN mkdir -p /app/var && chown btl:btl /app/var && chmod 0755 /usr/local/bin/docker-entrypoint.sh
ENV BTL_CONFIG=/app/config/botticelli.yaml \
    BTL_MIGRATIONS=/app/migrations \
    BTL_LOG=info
USER btl
# API + dashboard + /metrics (every service: 8080), bus publish/collect/control.
EXPOSE 8080 7450 7451 7452
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["help"]
