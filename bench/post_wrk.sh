#!/usr/bin/env bash
# POST /v1/score with 1,000 items over loopback, one connection, one request
# at a time (issue #4, target 3), against the service of bench/service_bench
# (embedded Kafka, 100,000 generated events learned first, then idle).
# Prints wrk's latency percentiles, the service's CPU time per request
# (every thread of the process, so the idle service's own threads count), the
# share of requests whose handler finished within 0.5 and 1 ms (the
# service's duration histogram), and the hypervisor's steal time during the run.
#
#   bench/post_wrk.sh BUILD_DIR [SECONDS]
# Environment: N (items per request, 1000).
set -euo pipefail
build=${1:?usage: post_wrk.sh BUILD_DIR [SECONDS]}
secs=${2:-6}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/host.sh"
log=$(mktemp /tmp/post_wrk.XXXXXX.log)
"$build/bench/service_bench" throughput --events 100000 --hold $((secs + 30)) >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
until grep -q '^idle' "$log"; do
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2
done
addr=$(grep -m1 '^http=' "$log" | cut -d= -f2)
ticks() { awk '{print $14 + $15}' /proc/$pid/stat; }
t0=$(ticks)
host_mark "$addr"
out=$(wrk -t1 -c1 -d"${secs}s" -s "$here/post_score.lua" "http://$addr" | tail -1)
t1=$(ticks)
rps=$(echo "$out" | sed 's/.*; \([0-9]*\) req\/s/\1/')
echo "$out; service cpu $(awk -v a="$t0" -v b="$t1" -v r="$rps" -v s="$secs" -v hz="$(getconf CLK_TCK)" \
  'BEGIN { printf "%.0f us/request", (b - a) / hz / (r * s) * 1e6 }')"
host_report "$addr"
