#!/usr/bin/env bash
# GET /v1/score latency with wrk over loopback (issue #4, target 3):
#   1. while the learner consumes a backlog at full speed, at a capped rate
#      (CONNS connections, each pausing DELAY_MS after every response);
#   2. idle (everything learned), as fast as wrk can go.
# The service runs in-process in bench/service_bench (embedded Kafka,
# RocksDB store in a temp dir, HTTP on 127.0.0.1, 2 server threads).
#
#   bench/serve_wrk.sh BUILD_DIR [EVENTS]
# Environment: CONNS (20), DELAY_MS (1), SECONDS_BUSY (10), SECONDS_IDLE (10),
# IDLE_CONNS (64), THREADS (2, wrk threads), BENCH_ARGS (extra service_bench options,
# e.g. "--train-nice 19").
set -euo pipefail
build=${1:?usage: serve_wrk.sh BUILD_DIR [EVENTS]}
events=${2:-4000000}
here=$(cd "$(dirname "$0")" && pwd)
conns=${CONNS:-20}
delay=${DELAY_MS:-1}
busy_s=${SECONDS_BUSY:-10}
idle_s=${SECONDS_IDLE:-10}
idle_conns=${IDLE_CONNS:-64}
threads=${THREADS:-2}
log=$(mktemp /tmp/serve_wrk.XXXXXX.log)

"$build/bench/service_bench" ${BENCH_ARGS:-} throughput --events "$events" --hold $((idle_s + 30)) >"$log" 2>&1 &
bench_pid=$!
trap 'kill $bench_pid 2>/dev/null || true' EXIT

wait_for() {  # wait_for PATTERN: until the bench log has a line matching it
  until grep -q "$1" "$log"; do
    if ! kill -0 $bench_pid 2>/dev/null; then
      cat "$log"
      echo "service_bench exited" >&2
      exit 1
    fi
    sleep 0.2
  done
}

wait_for '^http='
addr=$(grep -m1 '^http=' "$log" | cut -d= -f2)
echo "service at $addr; load $(cut -d' ' -f1-3 /proc/loadavg)"
wait_for '^consuming'
echo "== GET /v1/score while learning: wrk -t$threads -c$conns -d${busy_s}s, DELAY_MS=$delay"
DELAY_MS=$delay wrk -t"$threads" -c"$conns" -d"${busy_s}s" --latency -s "$here/score.lua" "http://$addr"
grep -E '^  [0-9.]+ s: ' "$log" | tail -3 || true
if grep -q '^idle' "$log"; then
  echo "(note: the backlog was fully learned before wrk finished; raise EVENTS)"
fi
wait_for '^idle'
grep -E '^throughput' "$log" || true
echo "== GET /v1/score idle: wrk -t$threads -c$idle_conns -d${idle_s}s; load $(cut -d' ' -f1-3 /proc/loadavg)"
wrk -t"$threads" -c"$idle_conns" -d"${idle_s}s" --latency -s "$here/score.lua" "http://$addr"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
kill $bench_pid 2>/dev/null || true
wait $bench_pid 2>/dev/null || true
rm -f "$log"
