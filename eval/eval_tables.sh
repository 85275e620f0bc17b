#!/usr/bin/env bash
# Reproduces the tables of EVAL.md. Usage: eval/eval_tables.sh BUILD_DIR [OUT_DIR]
# Needs the targets `recstream` and `eval_bench` built in BUILD_DIR.
set -euo pipefail
build=${1:?usage: eval_tables.sh BUILD_DIR [OUT_DIR]}
out=${2:-/tmp/recstream-eval}
mkdir -p "$out"
rs="$build/app/recstream"
bench="$build/eval/eval_bench"

# Stream A: the defaults (10k users, 2k items, 1M events).
[ -f "$out/a.jsonl" ] || "$rs" gen --events 1000000 --seed 1 --out "$out/a.jsonl" --quiet
# Stream B: sparse users (50k users, 5k items, 1M events).
[ -f "$out/b.jsonl" ] || "$rs" gen --events 1000000 --users 50000 --items 5000 --seed 2 \
  --out "$out/b.jsonl" --quiet

echo "## Stream A: defaults vs baselines"
"$bench" --events "$out/a.jsonl" --baselines --single-task "defaults"
echo
echo "## Stream A: architectures, weightings and options"
"$bench" --events "$out/a.jsonl" \
  "mmoe:arch=mmoe" \
  "fixed:weighting=fixed" "gradnorm:weighting=gradnorm" "dwa:weighting=dwa" \
  "huber:rating_loss=huber" "adamw (dense):dense_optimizer=adamw,lr_dense=0.002" \
  "esmm:esmm=true" "negatives=2:negatives=2"
echo
echo "## Stream B: defaults vs baselines"
"$bench" --events "$out/b.jsonl" --baselines --single-task "defaults" "mmoe:arch=mmoe"
