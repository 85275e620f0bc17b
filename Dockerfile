# recstream built from this repository on Debian 12, with the same installer
# the README and CI use.
FROM debian:bookworm AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DRECSTREAM_BUILD_TESTS=OFF -DRECSTREAM_BUILD_BENCH=OFF \
 && cmake --build build --target recstream

FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      librdkafka++1 librocksdb7.8 libtbb12 libfmt9 libspdlog1.10 libsimdjson14 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/app/recstream /usr/local/bin/recstream
COPY config/recstream.example.toml /etc/recstream/recstream.toml
VOLUME /var/lib/recstream
EXPOSE 8080
ENTRYPOINT ["recstream"]
CMD ["serve", "--config", "/etc/recstream/recstream.toml", "--set", "store.path=/var/lib/recstream", "--set", "serve.listen=0.0.0.0:8080"]
