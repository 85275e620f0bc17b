# Helpers for the bench scripts that run recstream processes (sourced):
# a temp directory and background processes cleaned up on exit, the
# embedded broker, free ports, and reading /v1/stats.
#
#   procs_init NAME      $tmp (a fresh /tmp/NAME.XXXXXX), removed on exit with
#                        every pid added to `pids`
#   start_broker P CMD.. `CMD.. broker` (CMD.. the recstream binary, perhaps after a
#                        taskset) with P partitions per topic; sets $brokers
#   free_port            a free TCP port on 127.0.0.1
#   wait_http URL S      until URL answers 2xx (S seconds, else the logs and exit 1)
#   learned ADDR         events learned (every task), from ADDR's /v1/stats
#   stat_of ADDR KEY     the first numeric field KEY of ADDR's /v1/stats

procs_init() {
  tmp=$(mktemp -d "/tmp/$1.XXXXXX")
  pids=()
  trap procs_cleanup EXIT
}
procs_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
start_broker() {
  "${@:2}" broker --partitions "$1" --bootstrap-file "$tmp/bootstrap" >"$tmp/broker.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do [ -s "$tmp/bootstrap" ] && break; sleep 0.1; done
  brokers=$(tr -d '\n ' <"$tmp/bootstrap")
}
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_http() {
  for _ in $(seq 1 $(($2 * 10))); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2
  tail -20 "$tmp"/*.log >&2
  exit 1
}
learned() {
  curl -s "http://$1/v1/stats" |
    grep -o '"learned":[0-9.e+]*' | cut -d: -f2 | awk '{s += $1} END {printf "%.0f", s}'
}
stat_of() {
  curl -s "http://$1/v1/stats" | grep -o "\"$2\":[0-9.e+-]*" | head -1 | cut -d: -f2
}
