#!/usr/bin/env bash
# Issue #28: eval throughput of a positive-only stream (implicit feedback,
# histories, 8 sampled negatives per event) against an explicit-label
# stream of the same size, same build, 2 training threads, taking turns
# (ROUNDS pairs) so that the machine's drift hits both alike. Prints each
# run's events/s and the implicit/explicit ratio of each pair.
#   bench/implicit_rate.sh BUILD_DIR [EVENTS] [ROUNDS]
# IMPLICIT_SET="model.implicit_negatives=4" adds --set options to the
# implicit runs.
set -euo pipefail
build=${1:?usage: implicit_rate.sh BUILD_DIR [EVENTS] [ROUNDS]}
events=${2:-1000000}
rounds=${3:-3}
rs=$build/app/recstream
dir=${TMPDIR:-/tmp}/recstream-implicit-rate
mkdir -p "$dir"
[ -f "$dir/explicit-$events.jsonl" ] ||
  "$rs" gen --events "$events" --seed 1 --quiet --out "$dir/explicit-$events.jsonl"
[ -f "$dir/implicit-$events.jsonl" ] ||
  "$rs" gen --implicit --events "$events" --seed 1 --quiet --out "$dir/implicit-$events.jsonl"
rate() {
  "$rs" eval --events "$dir/$1-$events.jsonl" --set learner.threads=2 --quiet "${@:2}" |
    sed -n 's/.*(\([0-9]*\) events\/s).*/\1/p'
}
for r in $(seq "$rounds"); do
  e=$(rate explicit)
  set_args=()
  for kv in ${IMPLICIT_SET:-}; do set_args+=(--set "$kv"); done
  i=$(rate implicit "${set_args[@]}")
  echo "round $r: explicit $e ev/s, implicit $i ev/s, ratio $(awk -v a="$i" -v b="$e" 'BEGIN{printf "%.3f", a/b}')"
done
