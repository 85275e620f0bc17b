#!/usr/bin/env bash
# Reproduces the tables of EVAL.md. Usage: eval/eval_tables.sh BUILD_DIR [OUT_DIR]
# Needs the targets `recstream` and `eval_bench` built in BUILD_DIR. About an hour on
# two cores; the 10M-event stream D takes most of it (1.5 GB on disk).
set -euo pipefail
build=${1:?usage: eval_tables.sh BUILD_DIR [OUT_DIR]}
out=${2:-/tmp/recstream-eval}
mkdir -p "$out"
rs="$build/app/recstream"
bench="$build/eval/eval_bench"
gen() { local f=$1; shift; [ -f "$out/$f" ] || "$rs" gen "$@" --out "$out/$f" --quiet; }

gen a.jsonl --events 1000000 --seed 1                                   # A: 100 events per user
gen b.jsonl --events 1000000 --users 50000 --items 5000 --seed 2        # B: 20 events per user
gen c3.jsonl --events 3000000 --users 1000 --seed 3                     # C3: 3,000 per user
gen d.jsonl --events 10000000 --seed 4                                  # D: 1,000 per user
[ -f "$out/e.jsonl" ] || "$rs" gen --events 1000000 --items 50000 --seed 5 --out "$out/e.jsonl" \
  --item-vectors "$out/e_vec.jsonl" --quiet                             # E: 50k items, vectors
grep '"type":"rating"' "$out/a.jsonl" > "$out/a_rating.jsonl"
grep -v '"type":"rating"' "$out/a.jsonl" > "$out/a_binary.jsonl"

echo "## Stream D: defaults vs baselines, oracle bound, MMoE"
"$bench" --events "$out/d.jsonl" --baselines --single-task --oracle 10000000,10000,2000,4 \
  defaults "mmoe:arch=mmoe"
echo
echo "## Stream C3"
"$bench" --events "$out/c3.jsonl" --baselines --oracle 3000000,1000,2000,3 defaults
echo
echo "## Stream A: defaults vs baselines"
"$bench" --events "$out/a.jsonl" --baselines --single-task --oracle 1000000,10000,2000,1 defaults
echo
echo "## Stream A: architectures, weightings and options"
"$bench" --events "$out/a.jsonl" \
  "mmoe:arch=mmoe" \
  "fixed:weighting=fixed" "gradnorm:weighting=gradnorm" "dwa:weighting=dwa" \
  "huber:rating_loss=huber" "adamw (dense):dense_optimizer=adamw,lr_dense=0.002" \
  "esmm:esmm=true" "negatives=2:negatives=2"
echo
echo "## Stream B: defaults vs baselines"
"$bench" --events "$out/b.jsonl" --baselines --single-task --oracle 1000000,50000,5000,2 \
  defaults "mmoe:arch=mmoe"
echo
echo "## Ratings only, clicks and purchases only (stream A)"
"$bench" --events "$out/a_rating.jsonl" --baselines defaults
"$bench" --events "$out/a_binary.jsonl" --baselines defaults
echo
echo "## Loss weights over time (stream A): weights after 10k, 100k, 500k, 1M events"
for w in fixed uncertainty gradnorm dwa; do
  "$rs" eval --events "$out/a.jsonl" --set model.weighting=$w --report "$out/w_$w.json" --quiet \
    > /dev/null
  python3 - "$out/w_$w.json" "$w" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
h = r["task_weights_history"]
def at(n):
    s = min(h, key=lambda x: abs(x["events"] - n))
    return "%.2f / %.2f / %.2f" % (s["click"], s["purchase"], s["rating"])
t = r["tasks"]
print("| %s | %s | %.4f | %.4f | %.4f |" % (sys.argv[2], " | ".join(at(n) for n in (10000, 100000, 500000, 1000000)),
      t["click"]["last10"]["auc"], t["purchase"]["last10"]["auc"], t["rating"]["last10"]["mae"]))
PY
done
echo
echo "## Warm start (stream E)"
"$rs" eval --events "$out/e.jsonl" --set model.pretrained_dim=16 --quiet
"$rs" eval --events "$out/e.jsonl" --set model.pretrained_dim=16 --vectors "$out/e_vec.jsonl" --quiet
echo
echo "## Positive-only streams: ranking against the baselines (110k, 1M, deep histories)"
for spec in "i110k:--implicit --events 110000 --seed 1" "i1m:--implicit --events 1000000 --seed 1" \
            "ideep:--implicit --users 1000 --events 100000 --seed 2"; do
  name=${spec%%:*}
  # shellcheck disable=SC2086
  gen "$name.jsonl" ${spec#*:}
  echo "### $name"
  "$rs" eval --events "$out/$name.jsonl" --ranking 10 --candidates 100 --baselines --quiet |
    grep '^ranking'
done
