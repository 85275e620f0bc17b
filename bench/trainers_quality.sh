#!/usr/bin/env bash
# Several trainers on one model (issue #31): `recstream eval --trainers 2`
# against one trainer on the same stream, over exchange intervals (events
# each trainer learns between two exchanges), one after another in one run.
#
#   bench/trainers_quality.sh BUILD_DIR EVENTS_FILE [RANKING_ARGS...]
# e.g. bench/trainers_quality.sh build a.jsonl
#      bench/trainers_quality.sh build implicit.jsonl --ranking 10 --candidates 100
# Prints, per run, the report's first lines (click AUC, rating MAE, HR@10)
# and the bytes exchanged per event.
set -euo pipefail
build=${1:?usage: trainers_quality.sh BUILD_DIR EVENTS_FILE [EVAL_ARGS...]}
events=${2:?usage: trainers_quality.sh BUILD_DIR EVENTS_FILE [EVAL_ARGS...]}
shift 2
rs="$build/app/recstream"
intervals=${INTERVALS:-"1000 5000 20000 50000 100000"}
echo "== 1 trainer"
"$rs" eval --events "$events" --quiet "$@" | grep -E "^(events|click|purchase|rating|ranking|  )" | head -6
for x in $intervals; do
  echo "== 2 trainers, exchange every $x events each"
  "$rs" eval --events "$events" --quiet --trainers 2 --exchange-events "$x" "$@" |
    grep -E "^(events|trainers|click|purchase|rating|ranking|  )" | head -7
done
