#!/usr/bin/env bash
# The memory limit (issue #30, model.memory_limit_mb) against the same build
# without it, one after the other in one run: `service_bench longtail` (a
# learner and its RocksDB store as the service holds them, checkpoints
# beside training, no Kafka) on a long tail of new visitors, RETURN of the
# events from an earlier visitor drawn uniformly (who come back from the
# store, or start afresh once expired).
#
#   bench/memory_limit.sh BUILD_DIR [EVENTS] [EXPIRE_S] [LIMIT_MB] [RETURN] [VISITOR_EVENTS] [RECENT]
# Defaults: 3,000,000 events, model.expire.user_s=600 (the stream's events
# are 2 ms apart: 600 s hold ~100k visitors), a limit of 18 MiB (about 25%
# of what the model takes without one here), RETURN 0.2, VISITOR_EVENTS 3
# (each new visitor's consecutive events: a new user every third event),
# RECENT 0 (returning visitors drawn uniformly from every visitor seen; N:
# about N visitors back, with exponential recency).
# Prints the last
# report line of each run (events/s in Train, AUC, rows, RSS, store) and
# its timing line.
set -euo pipefail
build=${1:?usage: memory_limit.sh BUILD_DIR [EVENTS] [EXPIRE_S] [LIMIT_MB] [RETURN] [VISITOR_EVENTS] [RECENT]}
events=${2:-3000000}
expire=${3:-600}
limit=${4:-18}
ret=${5:-0.2}
visitor=${6:-3}
recent=${7:-0}
bench="$build/bench/service_bench"
for mb in 0 "$limit"; do
  echo "== model.memory_limit_mb=$mb model.expire.user_s=$expire events=$events return=$ret visitor_events=$visitor return_recent=$recent"
  out=$(/usr/bin/time -v "$bench" longtail --events "$events" --expire-user-s "$expire" \
          --checkpoint-every 500000 --return-share "$ret" --memory-limit-mb "$mb" --visitor-events "$visitor" --return-recent "$recent" 2>&1)
  echo "$out" | grep -E "^ +events " | head -1
  echo "$out" | grep -E "^ +[0-9]+ " | tail -2 | head -1
  echo "$out" | grep -E "^time:|^training waited|^checkpoints wrote|^stored user rows|Maximum resident"
done
