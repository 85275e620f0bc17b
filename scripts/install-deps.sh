#!/usr/bin/env bash
# Installs every Debian package recstream needs to build, test and run.
# Used by the README's commands and by .ci/run; safe to run repeatedly.
#
#   install-deps.sh           build, test and benchmark tools
#   install-deps.sh --build   only what building the `recstream` binary needs
#                             (the Dockerfile's build stage)
#
# The runtime image's packages are listed apart, in scripts/runtime-packages.txt.
set -euo pipefail

BUILD=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  librdkafka-dev librocksdb-dev libtbb-dev libeigen3-dev libfmt-dev
  libsimdjson-dev libboost-dev libcli11-dev libtomlplusplus-dev libspdlog-dev
)
# Tests: Catch2, the dashboard's browser, the compose file's checker, the
# image test (mmdebstrap builds its root file system; unshare and ip from
# util-linux and iproute2 give it a network of its own) and Python for it.
# Benchmarks: wrk.
TEST=(
  catch2 wrk docker-compose python3 python3-yaml
  chromium chromium-driver curl mmdebstrap iproute2 util-linux
)

PACKAGES=("${BUILD[@]}")
if [ "${1:-}" != "--build" ]; then PACKAGES+=("${TEST[@]}"); fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
