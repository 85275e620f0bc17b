#!/usr/bin/env bash
# Installs every Debian package recstream needs to build, test and run.
# Used by the README's commands and by .ci/run; safe to run repeatedly.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates curl
  librdkafka-dev librocksdb-dev libtbb-dev libeigen3-dev libfmt-dev catch2
  libsimdjson-dev libboost-dev libcli11-dev libtomlplusplus-dev libspdlog-dev
  prometheus-cpp-dev libbenchmark-dev wrk kcat docker-compose python3
  chromium chromium-driver
)

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
