#!/usr/bin/env bash
# Memory under a long tail of new ids (issue #30): `recstream eval` on a
# generated stream whose users are mostly seen once, with and without
# expiry and admission, one after another in the same run. Reports peak
# resident memory (/usr/bin/time), events/s and quality per setting.
#
#   bench/memory_bench.sh BUILD_DIR [EVENTS] [EXPIRE_S]
# EVENTS (default 4000000) events over as many user ids (the generator
# draws them uniformly: most are seen once or twice), 20,000 items. The
# generator's events are a few ms apart in event time, so EXPIRE_S
# (default 60) seconds hold about EXPIRE_S * 300 events' users.
set -euo pipefail
build=${1:?usage: memory_bench.sh BUILD_DIR [EVENTS] [EXPIRE_S]}
events=${2:-4000000}
expire=${3:-60}
bin="$build/app/recstream"
stream=$(mktemp /tmp/memory_bench.XXXXXX.jsonl)
trap 'rm -f "$stream" "$stream".*' EXIT
"$bin" gen --events "$events" --users "$events" --items 20000 --quiet --out "$stream"
printf "%-34s %12s %10s %9s %9s %12s %9s\n" setting "peak RSS KiB" events/s "click AUC" "rating MAE" "expired" "users"
for setting in "expire=0 admit=1" "expire=$expire admit=1" "expire=0 admit=2" "expire=$expire admit=2"; do
  e=${setting#expire=}; e=${e%% *}
  a=${setting##*admit=}
  /usr/bin/time -v "$bin" eval --events "$stream" --quiet --report "$stream.json" \
    --set model.expire.user_s="$e" --set model.admit_after="$a" >/dev/null 2>"$stream.time"
  rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$stream.time")
  python3 - "$stream.json" "$setting" "$rss" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = r.get("model", {})
print("%-34s %12s %10.0f %9.6f %9.6f %12s %9s" % (
    sys.argv[2], sys.argv[3], r["events_per_second"], r["tasks"]["click"]["auc"],
    r["tasks"]["rating"]["mae"], m.get("expired_users", "?"), m.get("users", "?")))
PY
done
