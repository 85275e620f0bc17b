#!/usr/bin/env bash
# GET /v1/score latency with wrk over loopback (issue #4, target 3):
#   1. while the learner consumes a backlog at full speed, at a capped rate
#      (CONNS connections, each pausing DELAY_MS after every response);
#   2. idle (everything learned), at the same capped rate: the apparatus
#      alone (wrk, loopback, the I/O threads), the floor under phase 1;
#   3. idle, as fast as wrk can go.
# The service runs in-process in bench/service_bench (embedded Kafka,
# RocksDB store in a temp dir, HTTP on 127.0.0.1, 2 server threads).
#
#   bench/serve_wrk.sh BUILD_DIR [EVENTS]
# Environment: CONNS (20), DELAY_MS (1), SECONDS_BUSY (10), SECONDS_FLOOR (8; 0
# skips phase 2), SECONDS_IDLE (10),
# IDLE_CONNS (64), THREADS (2, wrk threads), BENCH_ARGS (extra service_bench options,
# e.g. "--train-nice 19" or "--io-priority fifo:50").
#   WRK_PRIO: a command prefix for wrk in the two capped phases, e.g. "chrt -f 40"
#     or "nice -n -10". wrk is the measuring apparatus: on 2 shared cores its own
#     wait for a CPU shows up in its latencies. Runs with and without it
#     measure different things; say which one a figure comes from. Not used
#     in the full-speed idle phase: a real-time wrk at full speed against
#     real-time I/O threads takes both cores (seen: a 10 s run lasting 40 s, load 12).
#   SCHEDSTAT=1: print, per thread group of service_bench and wrk, the CPU
#     time and the run-queue wait (/proc/<tid>/schedstat) during the busy
#     phase.
# Both phases also report the hypervisor's steal time while wrk ran and the
# share of requests whose handler finished within 0.5 and 1 ms (the
# service's duration histogram, bench/host.sh); the busy phase also the events learned
# per second while wrk ran (from /v1/stats before and after).
# Target 3 (~20,000 req/s while learning), I/O threads at SCHED_FIFO, wrk
# real-time below them:
#   CONNS=37 WRK_PRIO="chrt -f 40" BENCH_ARGS="--io-priority fifo:50" SCHEDSTAT=1 \
#     bench/serve_wrk.sh build 4000000
set -euo pipefail
build=${1:?usage: serve_wrk.sh BUILD_DIR [EVENTS]}
events=${2:-4000000}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/host.sh"
conns=${CONNS:-20}
delay=${DELAY_MS:-1}
busy_s=${SECONDS_BUSY:-10}
floor_s=${SECONDS_FLOOR:-8}
idle_s=${SECONDS_IDLE:-10}
idle_conns=${IDLE_CONNS:-64}
threads=${THREADS:-2}
log=$(mktemp /tmp/serve_wrk.XXXXXX.log)

"$build/bench/service_bench" ${BENCH_ARGS:-} throughput --events "$events" --hold $((floor_s + idle_s + 30)) >"$log" 2>&1 &
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
learned() {  # events learned so far, from /v1/stats
  curl -s "http://$addr/v1/stats" |
    grep -o '"learned":[0-9.e+]*' | cut -d: -f2 | awk '{s += $1} END {printf "%.0f", s}'
}
# One line per thread of the given processes: tid comm nice policy run_ns wait_ns slices
threads_of() {
  local p t stat comm run wait slices f
  for p in "$@"; do
    for t in /proc/"$p"/task/*; do
      # Builtins only: this runs while wrk measures.
      { read -r stat <"$t/stat" && read -r comm <"$t/comm" &&
        read -r run wait slices <"$t/schedstat"; } 2>/dev/null || continue
      read -r -a f <<<"${stat##*) }"
      echo "${t##*/} ${comm// /_} ${f[16]:-?} ${f[38]:-?} $run $wait $slices"
    done
  done
}
# sched_report BEFORE AFTER SECONDS: CPU and run-queue wait per thread group
sched_report() {
  printf "%-36s %3s %7s %7s %9s %10s\n" "thread (comm, nice, policy)" n cpu% wait% runs/s wait/run
  awk -v secs="$3" '
    FNR == NR { run[$1] = $5; wait[$1] = $6; sl[$1] = $7; next }
    { k = $2 " nice=" $3 " policy=" $4; n[k]++
      r[k] += $5 - run[$1]; w[k] += $6 - wait[$1]; s[k] += $7 - sl[$1] }
    END {
      for (k in n) if (r[k] + w[k] > 0)
        printf "%-36s %3d %6.1f%% %6.1f%% %9.0f %8.1fus\n", k, n[k], r[k] / secs / 1e7,
               w[k] / secs / 1e7, s[k] / secs, s[k] ? w[k] / s[k] / 1e3 : 0
    }' "$1" "$2" | sort -t% -k2 -rn
}

wait_for '^consuming'
echo "== GET /v1/score while learning: ${WRK_PRIO:+$WRK_PRIO }wrk -t$threads -c$conns -d${busy_s}s, DELAY_MS=$delay; load $(cut -d' ' -f1-3 /proc/loadavg)"
learned0=$(learned)
host_mark "$addr"
t0=$(date +%s.%N)
# shellcheck disable=SC2086
DELAY_MS=$delay ${WRK_PRIO:-} wrk -t"$threads" -c"$conns" -d"${busy_s}s" --latency -s "$here/score.lua" "http://$addr" &
wrk_pid=$!
if [ "${SCHEDSTAT:-0}" = 1 ]; then
  sleep 1
  s0=$(date +%s.%N)
  threads_of $bench_pid $wrk_pid >"$log.s0"
  sleep $((busy_s - 3))
  threads_of $bench_pid $wrk_pid >"$log.s1"
  sched_s=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
fi
wait $wrk_pid
t1=$(date +%s.%N)
host_report "$addr"
learned1=$(learned)
awk -v a="$learned0" -v b="$learned1" -v t0="$t0" -v t1="$t1" 'BEGIN {
  printf "learned while wrk ran: %.0f events in %.2f s = %.0f events/s\n", b - a, t1 - t0,
         (b - a) / (t1 - t0) }'
if [ "${SCHEDSTAT:-0}" = 1 ]; then
  echo "-- threads during the busy phase ($sched_s s; wait = runnable but not running):"
  sched_report "$log.s0" "$log.s1" "$sched_s"
  [ -n "${KEEP_SCHED:-}" ] || rm -f "$log.s0" "$log.s1"
fi
grep -E '^  [0-9.]+ s: ' "$log" | tail -3 || true
if grep -q '^idle' "$log"; then
  echo "(note: the backlog was fully learned before wrk finished; raise EVENTS)"
fi
wait_for '^idle'
grep -E '^throughput' "$log" || true
if [ "$floor_s" -gt 0 ]; then
  sleep 3  # the final checkpoint's flush and compaction, if any, settle first
  echo "== GET /v1/score idle at the same capped rate (the apparatus alone): ${WRK_PRIO:+$WRK_PRIO }wrk -t$threads -c$conns -d${floor_s}s, DELAY_MS=$delay; load $(cut -d' ' -f1-3 /proc/loadavg)"
  host_mark "$addr"
  # shellcheck disable=SC2086
  DELAY_MS=$delay ${WRK_PRIO:-} wrk -t"$threads" -c"$conns" -d"${floor_s}s" -s "$here/score.lua" "http://$addr" | tail -1
  host_report "$addr"
fi
echo "== GET /v1/score idle: wrk -t$threads -c$idle_conns -d${idle_s}s; load $(cut -d' ' -f1-3 /proc/loadavg)"
host_mark "$addr"
wrk -t"$threads" -c"$idle_conns" -d"${idle_s}s" --latency -s "$here/score.lua" "http://$addr"
host_report "$addr"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
kill $bench_pid 2>/dev/null || true
wait $bench_pid 2>/dev/null || true
rm -f "$log"
