#!/usr/bin/env bash
# The service under an endless long tail of new users (issue #30): resident
# memory of `recstream serve` and the size of its store over time, with
# model.expire.user_s. The embedded broker runs in its own process
# (`recstream broker`); the generated stream (EVENTS events over as many
# user ids, 2 ms apart in event time) is produced at RATE events/s, since
# the broker keeps only ~5 MiB per partition.
#
#   bench/expiry_service.sh BUILD_DIR [EVENTS] [EXPIRE_S] [RATE]
# Prints every 5 s: seconds, events learned, users, expired users, RSS of
# the service (KiB), store size (KiB).
set -euo pipefail
build=${1:?usage: expiry_service.sh BUILD_DIR [EVENTS] [EXPIRE_S] [RATE]}
events=${2:-6000000}
expire=${3:-60}
rate=${4:-100000}
bin="$build/app/recstream"
. "$(cd "$(dirname "$0")" && pwd)/procs.sh"
procs_init expiry_service
start_broker 8 "$bin"
"$bin" gen --events "$events" --users "$events" --items 20000 --quiet --out "$tmp/events.jsonl"
port=$(free_port)
addr=127.0.0.1:$port
"$bin" serve --set kafka.brokers="$brokers" --set store.path="$tmp/store" \
  --set serve.listen=127.0.0.1:"$port" --set model.expire.user_s="$expire" \
  --set replicate.interval_ms=0 >"$tmp/serve.log" 2>&1 &
serve_pid=$!
pids+=($serve_pid)
wait_http "http://$addr/healthz" 60
"$bin" produce --brokers "$brokers" --rate "$rate" --quiet "$tmp/events.jsonl" &
produce_pid=$!
pids+=($produce_pid)
printf "%6s %10s %9s %10s %10s %10s\n" s learned users expired "RSS KiB" "store KiB"
start=$(date +%s)
last=-1
while :; do
  sleep 5
  l=$(learned "$addr")
  printf "%6d %10s %9s %10s %10s %10s\n" $(($(date +%s) - start)) "$l" "$(stat_of "$addr" users)" \
    "$(stat_of "$addr" expired_users)" "$(awk '/VmRSS/ {print $2}' /proc/$serve_pid/status)" \
    "$(du -sk "$tmp/store" | cut -f1)"
  [ "$l" -ge "$events" ] && break
  # Everything produced and nothing more learned: the broker dropped what
  # the service had not read yet (its ~5 MiB per partition).
  if ! kill -0 $produce_pid 2>/dev/null && [ "$l" = "$last" ]; then
    echo "(the embedded broker dropped $((events - l)) events before they were read: lower RATE)"
    break
  fi
  last=$l
done
