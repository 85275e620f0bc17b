# Helpers for the wrk scripts (sourced): the hypervisor's steal time and the
# service's own request-duration histogram around a measurement.

# host_ticks: "TOTAL STEAL", the machine's CPU ticks over all CPUs and the
# part of them stolen by the hypervisor (first line of /proc/stat).
host_ticks() {
  awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9; exit }' /proc/stat
}

# steal_since "TOTAL STEAL": the steal time since that reading, as a phrase.
steal_since() {
  host_ticks | awk -v before="$1" 'BEGIN { split(before, b, " ") }
    { t = $1 - b[1]; s = $2 - b[2]
      printf "hypervisor steal %d ticks (%.1f%% of the CPU time)", s, t ? 100 * s / t : 0 }'
}

# score_buckets ADDR: the cumulative counts of /v1/score's handler times
# (recstream_http_request_duration_seconds: from the parsed request to the
# built response, network I/O and waits for a CPU before it excluded),
# "le=count" pairs on one line.
score_buckets() {
  curl -s "http://$1/metrics" |
    awk -F'[{}]' '/^recstream_http_request_duration_seconds_bucket/ && /route="\/v1\/score"/ {
      split($2, kv, "le=\""); le = kv[2]; sub(/".*/, "", le); split($3, c, " ")
      printf "%s=%s ", le, c[1] }'
}

# server_share BEFORE AFTER: of the /v1/score requests between two
# score_buckets readings, the share the handler finished within 0.5 and 1 ms.
server_share() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(a, x, " "); for (i = 1; i <= n; i++) { split(x[i], kv, "="); before[kv[1]] = kv[2] }
    n = split(b, y, " "); for (i = 1; i <= n; i++) { split(y[i], kv, "="); after[kv[1]] = kv[2] }
    total = after["+Inf"] - before["+Inf"]
    if (total <= 0) { print "handler alone: no requests"; exit }
    printf "handler alone (network I/O excluded): %d requests, %.2f%% within 0.5 ms, %.3f%% within 1 ms\n",
           total, 100 * (after["0.0005"] - before["0.0005"]) / total,
           100 * (after["0.001"] - before["0.001"]) / total }'
}

# host_mark ADDR, then host_report ADDR after a measurement: the steal time
# and the handler's share (server_share) between the two, a line each.
host_mark() {
  mark_ticks=$(host_ticks)
  mark_buckets=$(score_buckets "$1")
}
host_report() {
  echo "$(steal_since "$mark_ticks") while wrk ran"
  server_share "$mark_buckets" "$(score_buckets "$1")"
}
