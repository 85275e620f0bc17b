#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine and runs every test of recstream:
# installs the Debian packages, builds (Release) and runs ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j"$(nproc)"
cd "$BUILD_DIR"
ctest --output-on-failure --timeout 600 -j2
# Why each skipped test could not run here (ctest shows only that it did not).
if grep -q "SKIPPED:" Testing/Temporary/LastTest.log 2>/dev/null; then
  grep -h "SKIPPED:" Testing/Temporary/LastTest.log | sort -u
fi
