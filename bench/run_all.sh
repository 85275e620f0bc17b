#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md in turn (about 8 minutes on the
# 2-core machine), printing the load average beside each and the
# hypervisor's steal time after each.
#   bench/run_all.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: run_all.sh BUILD_DIR}
here=$(cd "$(dirname "$0")" && pwd)
b=$build/bench
. "$here/host.sh"
h_prev=
step_end() { [ -z "$h_prev" ] || echo "--- step done: $(steal_since "$h_prev")"; }
step() {
  step_end
  echo; echo "### $* (load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%H:%M:%S) UTC)"
  h_prev=$(host_ticks)
}

echo "commit $(git -C "$here/.." rev-parse --short HEAD); modified: $(git -C "$here/.." status --short -- learner ingest serve app store | tr '\n' ' ')"
step host_probe: how fast the host runs fixed work now
"$b/host_probe"
step learner_bench 10M events, 1 vs 2 threads
"$b/learner_bench" --events 10000000 --threads 1,2
step parser_bench
"$b/parser_bench" --benchmark_min_time=1
step api_bench: the serving handlers without the network
"$b/api_bench" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
step freshness idle
"$b/service_bench" freshness --samples 200
step freshness with 20000 background events/s
"$b/service_bench" freshness --samples 200 --background-rate 20000
step freshness with 20000 background events/s, no periodic checkpoints
"$b/service_bench" --checkpoint-ms 3600000 freshness --samples 200 --background-rate 20000
step checkpoint of every row after 1M events over 1M users, then a restart
"$b/service_bench" --checkpoint-ms 3600000 throughput --events 1000000 --users 1000000 --restart
step end to end throughput through Kafka, then HTTP latency one request at a time
"$b/service_bench" throughput --events 2000000 --latency
step wrk POST /v1/score with 1000 items, one connection
"$here/post_wrk.sh" "$build" 6
# 40 connections pausing 1 ms reach ~20,000 req/s on the 2-core machine (the
# rate of target 3); 8M events keep the learner busy for all of the 10 s.
step wrk GET /v1/score while learning, idle at the same rate, idle at full speed
CONNS=${CONNS:-40} "$here/serve_wrk.sh" "$build" 8000000
step serving cost against items
"$b/scoring_bench" --items 1000,100000,1000000 --reps 300
step snapshot, checkpoint and restore of 1M and 10M rows without Kafka
"$b/service_bench" store --rows 1000000 --delta-rows 1000000
"$b/service_bench" store --rows 10000000 --delta-rows 1000000
for users in 100000 1000000 10000000; do
  step learner cost against distinct users: $users
  "$b/learner_bench" --events $users --users $users --cyclic-users --threads 2 --no-predictions
done
step host_probe again
"$b/host_probe"
step_end
