#!/usr/bin/env bash
# Records what the learner computes, as files a refactoring must leave
# byte-identical: `recstream eval --predictions` with learner.threads=1 on
# three fixed generated streams (explicit labels; the same with user and item
# features; a positive-only stream, ranked), for the defaults and for each
# option whose code path differs.
#
#   tests/behaviour/record.sh RECSTREAM_BINARY OUT_DIR
#
# Prints one "sha256  name" line per predictions file (sorted), the format of
# tests/behaviour/predictions.sha256; tests/behaviour/check.sh compares them.
set -euo pipefail
bin=$1
out=$2
mkdir -p "$out"
"$bin" gen --events 20000 --users 2000 --items 400 --seed 5 --quiet --out "$out/explicit.jsonl" \
  --item-vectors "$out/vectors.jsonl" --vector-dim 8 --vector-noise 0.1
# The same stream with side features, derived deterministically from the ids.
python3 - "$out/explicit.jsonl" "$out/features.jsonl" <<'PY'
import json, sys
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as dst:
    for line in src:
        e = json.loads(line)
        u, i = str(e["user"]), str(e["item"])
        e["user_features"] = ["seg=s%d" % (sum(map(ord, u)) % 7)]
        e["item_features"] = ["cat=c%d" % (sum(map(ord, i)) % 13), "brand=b%d" % (len(i) % 3)]
        dst.write(json.dumps(e, separators=(",", ":")) + "\n")
PY
variants=(
  "defaults:"
  "mmoe:model.arch=mmoe"
  "esmm:model.esmm=true"
  "adamw:model.dense_optimizer=adamw"
  "negatives:model.negatives=2"
  "huber:model.rating_loss=huber"
  "gradnorm:model.weighting=gradnorm"
  "dwa:model.weighting=dwa"
  "pretrained:model.pretrained_dim=8"
)
for stream in explicit features; do
  for v in "${variants[@]}"; do
    name=${v%%:*}
    set_args=(--set learner.threads=1)
    extra=()
    [ -n "${v#*:}" ] && set_args+=(--set "${v#*:}")
    [ "$name" = pretrained ] && extra=(--vectors "$out/vectors.jsonl")
    "$bin" eval --events "$out/$stream.jsonl" --quiet "${set_args[@]}" "${extra[@]}" \
      --predictions "$out/$stream-$name.jsonl" >/dev/null
  done
done
# A positive-only stream: implicit feedback and histories, ranked (each
# ranked event's line carries its candidates' scores).
"$bin" gen --implicit --events 20000 --seed 5 --quiet --out "$out/implicit.jsonl"
for v in "defaults:" "history0:model.history=0" "explicit:model.feedback=explicit"; do
  name=${v%%:*}
  set_args=(--set learner.threads=1)
  [ -n "${v#*:}" ] && set_args+=(--set "${v#*:}")
  "$bin" eval --events "$out/implicit.jsonl" --quiet "${set_args[@]}" --ranking 10 \
    --candidates 20 --predictions "$out/implicit-$name.jsonl" >/dev/null
done
(cd "$out" && sha256sum explicit-*.jsonl features-*.jsonl implicit-*.jsonl | sort -k2)
