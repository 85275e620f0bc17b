#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for
# SECONDS seconds (default 60) on its corpus in fuzz/corpus/<target>/, which
# it grows in place and then minimises (the corpus is kept in the repository).
# Crashes are written to fuzz/findings/<target>/ and make the script fail.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]     (targets: parser_fuzz http_fuzz)
#   env: BUILD_DIR (build-fuzz), JOBS (1)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(parser_fuzz http_fuzz)
BUILD_DIR=${BUILD_DIR:-build-fuzz}
command -v clang++ >/dev/null || { echo "clang++ is needed (apt-get install clang)"; exit 2; }
# The learner is built with the default compiler (see fuzz/CMakeLists.txt).
cmake -S . -B "$BUILD_DIR-gcc" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRECSTREAM_BUILD_TESTS=OFF \
  -DRECSTREAM_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD_DIR-gcc" --target recstream_learner -j2
CC=clang CXX=clang++ cmake -S fuzz -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DRECSTREAM_FUZZ_LEARNER_LIB="$PWD/$BUILD_DIR-gcc/learner/librecstream_learner.a" >/dev/null
cmake --build "$BUILD_DIR" --target "${TARGETS[@]}" -j2
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/findings/$t"
  seeds=()
  [[ $t == parser_fuzz ]] && seeds=(tests/hostile)
  echo "== $t for ${SECONDS_EACH}s"
  if ! "$BUILD_DIR/$t" -max_total_time="$SECONDS_EACH" -max_len=2000000 -rss_limit_mb=4096 \
      -timeout=10 -print_final_stats=1 -artifact_prefix="fuzz/findings/$t/" \
      "fuzz/corpus/$t" "${seeds[@]}" 2>&1 | tee "$BUILD_DIR/$t.log" | grep -E "^(#[0-9]+ +DONE|stat::|==[0-9]+==ERROR|SUMMARY)"; then
    :
  fi
  # Keep a minimal corpus (libFuzzer merge); large inputs stay out of it
  # (tests/hostile has the 1 MB cases).
  find "fuzz/corpus/$t" -type f -size +64k -delete
  rm -rf "$BUILD_DIR/$t.min" && mkdir -p "$BUILD_DIR/$t.min"
  if "$BUILD_DIR/$t" -merge=1 -max_len=65536 "$BUILD_DIR/$t.min" "fuzz/corpus/$t" >/dev/null 2>&1; then
    rm -rf "fuzz/corpus/$t" && mv "$BUILD_DIR/$t.min" "fuzz/corpus/$t"
  fi
  if grep -q "==ERROR\|SUMMARY: \|deadly signal" "$BUILD_DIR/$t.log"; then
    echo "$t: FINDING, see fuzz/findings/$t/ and $BUILD_DIR/$t.log"; status=1
  fi
done
exit $status
