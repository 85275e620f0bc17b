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
tmp=$(mktemp -d /tmp/expiry_service.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
"$bin" broker --partitions 8 --bootstrap-file "$tmp/bootstrap" >"$tmp/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$tmp/bootstrap" ] && break; sleep 0.1; done
brokers=$(tr -d '\n ' <"$tmp/bootstrap")
"$bin" gen --events "$events" --users "$events" --items 20000 --quiet --out "$tmp/events.jsonl"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --set kafka.brokers="$brokers" --set store.path="$tmp/store" \
  --set serve.listen=127.0.0.1:"$port" --set model.expire.user_s="$expire" \
  --set replicate.interval_ms=0 >"$tmp/serve.log" 2>&1 &
serve_pid=$!
pids+=($serve_pid)
until curl -sf -o /dev/null "http://127.0.0.1:$port/healthz"; do sleep 0.1; done
"$bin" produce --brokers "$brokers" --rate "$rate" --quiet "$tmp/events.jsonl" &
produce_pid=$!
pids+=($produce_pid)
stat_of() { curl -s "http://127.0.0.1:$port/v1/stats" | grep -o "\"$1\":[0-9.e+-]*" | head -1 | cut -d: -f2; }
learned() {
  curl -s "http://127.0.0.1:$port/v1/stats" |
    grep -o '"learned":[0-9.e+]*' | cut -d: -f2 | awk '{s += $1} END {printf "%.0f", s}'
}
printf "%6s %10s %9s %10s %10s %10s\n" s learned users expired "RSS KiB" "store KiB"
start=$(date +%s)
last=-1
while :; do
  sleep 5
  l=$(learned)
  printf "%6d %10s %9s %10s %10s %10s\n" $(($(date +%s) - start)) "$l" "$(stat_of users)" \
    "$(stat_of expired_users)" "$(awk '/VmRSS/ {print $2}' /proc/$serve_pid/status)" \
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
