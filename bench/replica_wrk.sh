#!/usr/bin/env bash
# GET /v1/score on a replica while the trainer learns at full speed in
# another process (issue #29, target 3b). Four processes, pinned as far as
# two cores allow:
#   core 0: the embedded broker (`recstream broker`) and the trainer
#           (`recstream serve`, learner.threads=1);
#   core 1: the replica (`recstream replica`) and wrk (one thread).
# The trainer starts, the replica bootstraps; the trainer stops, the backlog
# of EVENTS generated events is produced, the trainer starts again and
# learns it at full speed while wrk asks the replica, at a capped rate
# (CONNS connections each pausing DELAY_MS after every response). Then the
# same wrk once everything is learned (the floor: replica and wrk alone).
#
#   bench/replica_wrk.sh BUILD_DIR [EVENTS]
# Environment: CONNS (20), DELAY_MS (1), SECONDS_BUSY (8), SECONDS_FLOOR (8),
# USERS (100000) and ITEMS (10000) of the generated world.
# The mock broker keeps ~5 MiB per partition: the event topics get enough
# partitions for the backlog, and the model topic may drop versions before
# the replica reads them (it then snapshots again: `resyncs` below).
set -euo pipefail
build=${1:?usage: replica_wrk.sh BUILD_DIR [EVENTS]}
events=${2:-4000000}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/host.sh"
bin="$build/app/recstream"
conns=${CONNS:-20}
delay=${DELAY_MS:-1}
busy_s=${SECONDS_BUSY:-8}
floor_s=${SECONDS_FLOOR:-8}
users=${USERS:-100000}
items=${ITEMS:-10000}
. "$here/procs.sh"
procs_init replica_wrk

partitions=$((events * 230 * 72 / 100 / (3 << 20) + 1))
[ "$partitions" -ge 3 ] || partitions=3
start_broker "$partitions" taskset -c 0 "$bin"
"$bin" gen --events "$events" --users $users --items $items --quiet --out "$tmp/events.jsonl"
tport=$(free_port)
rport=$(free_port)
start_trainer() {
  taskset -c 0 "$bin" serve --set kafka.brokers="$brokers" --set store.path="$tmp/store" \
    --set serve.listen=127.0.0.1:"$tport" --set learner.threads=1 >>"$tmp/trainer.log" 2>&1 &
  trainer_pid=$!
  pids+=($trainer_pid)
  wait_http "http://127.0.0.1:$tport/healthz" 60
}
start_trainer
taskset -c 1 "$bin" replica --set kafka.brokers="$brokers" --set serve.listen=127.0.0.1:"$rport" \
  >"$tmp/replica.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$rport/readyz" 60
kill -TERM $trainer_pid
wait $trainer_pid || true
echo "producing $events events over $partitions partitions per topic"
taskset -c 0 "$bin" produce --brokers "$brokers" --quiet "$tmp/events.jsonl"
start_trainer
until [ "$(learned 127.0.0.1:$tport)" -gt 0 ]; do sleep 0.05; done
taddr=127.0.0.1:$tport
raddr=127.0.0.1:$rport
echo "== replica GET /v1/score while the trainer learns: wrk -t1 -c$conns -d${busy_s}s DELAY_MS=$delay (trainer+broker on core 0, replica+wrk on core 1); load $(cut -d' ' -f1-3 /proc/loadavg)"
learned0=$(learned $taddr)
applied0=$(stat_of $raddr versions_applied)
host_mark "$raddr"
t0=$(date +%s.%N)
USERS=$users ITEMS=$items DELAY_MS=$delay taskset -c 1 wrk -t1 -c"$conns" -d"${busy_s}s" --latency \
  -s "$here/score.lua" "http://$raddr"
t1=$(date +%s.%N)
host_report "$raddr"
learned1=$(learned $taddr)
applied1=$(stat_of $raddr versions_applied)
awk -v a="$learned0" -v b="$learned1" -v t0="$t0" -v t1="$t1" -v v0="$applied0" -v v1="$applied1" 'BEGIN {
  printf "trainer learned while wrk ran: %.0f events in %.2f s = %.0f events/s; replica applied %d versions\n",
         b - a, t1 - t0, (b - a) / (t1 - t0), v1 - v0 }'
if [ "$learned1" -ge "$events" ]; then
  echo "(note: the backlog was fully learned before wrk finished; raise EVENTS)"
fi
until [ "$(learned $taddr)" -ge "$events" ]; do sleep 0.2; done
until [ "$(learned $raddr)" -ge "$events" ]; do sleep 0.2; done
echo "replica: resyncs $(stat_of $raddr resyncs), gaps $(stat_of $raddr gaps), incomplete versions $(stat_of $raddr incomplete_versions), lag_ms $(stat_of $raddr lag_ms)"
sleep 2
echo "== replica GET /v1/score, everything learned (the floor): same wrk; load $(cut -d' ' -f1-3 /proc/loadavg)"
host_mark "$raddr"
USERS=$users ITEMS=$items DELAY_MS=$delay taskset -c 1 wrk -t1 -c"$conns" -d"${floor_s}s" --latency \
  -s "$here/score.lua" "http://$raddr"
host_report "$raddr"
