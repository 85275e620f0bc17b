# recstream built from this repository on Debian 12, with the same installer
# the README and CI use. tests/image_test.py lays this file's runtime stage
# into a Debian root file system and runs it (no Docker engine needed).
FROM debian:bookworm AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
# Only what building needs (no browser, load generator or test tools).
RUN bash scripts/install-deps.sh --build
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DRECSTREAM_BUILD_TESTS=OFF -DRECSTREAM_BUILD_BENCH=OFF \
 && cmake --build build --target recstream

FROM debian:bookworm-slim
# The runtime packages are listed once, in scripts/runtime-packages.txt.
COPY scripts/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      $(sed -e 's/#.*//' /tmp/runtime-packages.txt) \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt
COPY --from=build /src/build/app/recstream /usr/local/bin/recstream
COPY config/recstream.example.toml /etc/recstream/recstream.toml
VOLUME /var/lib/recstream
EXPOSE 8080
ENTRYPOINT ["recstream"]
CMD ["serve", "--config", "/etc/recstream/recstream.toml", "--set", "store.path=/var/lib/recstream", "--set", "serve.listen=0.0.0.0:8080"]
