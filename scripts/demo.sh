#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine and runs recstream with its embedded
# Kafka and a demo feed of synthetic events. Ctrl-C stops everything (the
# service writes a final checkpoint first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" --target recstream -j"$(nproc)"
BIN="$BUILD_DIR/app/recstream"

DEMO=${DEMO_DIR:-data/demo}
EVENTS=${DEMO_EVENTS:-300000}
RATE=${DEMO_RATE:-2000}
LISTEN=${DEMO_LISTEN:-127.0.0.1:8080}
mkdir -p "$DEMO"
# The embedded Kafka lives in memory, so each demo starts a fresh model.
rm -rf "$DEMO/store" "$DEMO/serve.log"

echo "demo: generating $EVENTS synthetic events"
"$BIN" gen --events "$EVENTS" --users 5000 --items 1000 --seed 1 --out "$DEMO/events.jsonl"

"$BIN" serve --set store.path="$DEMO/store" --set serve.listen="$LISTEN" \
  --set serve.admin_token="${DEMO_TOKEN:-demo}" >"$DEMO/serve.log" 2>&1 &
SERVE=$!
FEED=""
cleanup() {
  [ -n "$FEED" ] && kill "$FEED" 2>/dev/null || true
  kill -TERM "$SERVE" 2>/dev/null || true
  wait "$SERVE" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for _ in $(seq 1 100); do
  grep -q "serving on" "$DEMO/serve.log" 2>/dev/null && break
  kill -0 "$SERVE" 2>/dev/null || { cat "$DEMO/serve.log"; exit 1; }
  sleep 0.1
done
BROKERS=$(sed -n 's/.*Kafka bootstrap servers \([^ ]*\).*/\1/p' "$DEMO/serve.log" | head -1)
[ -n "$BROKERS" ] || { echo "demo: the service did not start:"; cat "$DEMO/serve.log"; exit 1; }

"$BIN" produce --brokers "$BROKERS" --rate "$RATE" --quiet "$DEMO/events.jsonl" &
FEED=$!

cat <<TXT

recstream is running: embedded Kafka at $BROKERS, HTTP on http://$LISTEN
feeding $EVENTS events at $RATE/s (log: $DEMO/serve.log).

  open http://$LISTEN/ for the live dashboard, or try:

  curl -s http://$LISTEN/v1/stats
  curl -s 'http://$LISTEN/v1/score?user=42&item=i7'
  curl -s 'http://$LISTEN/v1/recommend?user=42&k=5'
  curl -s http://$LISTEN/metrics | head

Ctrl-C to stop.
TXT
wait "$SERVE"
