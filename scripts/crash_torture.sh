#!/usr/bin/env bash
# Crash torture (issue #5, item 1). A `recstream broker` holds a stream of
# EVENTS generated events that `recstream produce` sends in chunks of CHUNK
# events, one chunk every INTERVAL seconds (bursts make large Kafka batches,
# which the mock broker serves far faster than a trickle of single messages);
# meanwhile `recstream serve` is killed with SIGKILL at random moments, KILLS
# times, and restarted on the same RocksDB directory each time. At the end:
#   - every restart restored its checkpoint (a torn or corrupt checkpoint
#     makes `serve` exit at start, which fails the script);
#   - the per-task `learned` counters equal the events produced per type
#     (none lost, none applied twice);
#   - the progressive metrics match those of an uninterrupted run over the
#     same stream (another consumer group and store, started with the
#     stream and never killed) within 0.005 AUC.
#
# librdkafka's mock cluster keeps only the last few MB of each partition and
# drops older messages. A consumer that falls that far behind would see
# "Offset out of range" and skip what was dropped, which is the broker's
# retention, not the service losing events: so each random kill delay starts
# only once the restarted service has caught up to within MAX_LAG events, and
# the script fails (as invalid) if the log shows an offset reset. If that
# happens, raise INTERVAL.
#
# Usage: scripts/crash_torture.sh [BUILD_DIR]
#   env: EVENTS (1000000) KILLS (20) CHUNK (10000) INTERVAL (3) SEED (1)
#        MIN_UP_MS (300) MAX_UP_MS (4000)
#        MAX_LAG (30000)
#
# Each kill comes MIN_UP_MS..MAX_UP_MS (uniformly random) after the restarted
# service is ready again and has caught up to within MAX_LAG events. Default
# Kafka settings: the trainer owns fixed partitions, so a restart waits for no
# consumer-group session.
#        WORK (a temporary directory, removed unless KEEP=1)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
BIN=$(realpath "$BUILD/app/recstream")
EVENTS=${EVENTS:-1000000}
KILLS=${KILLS:-20}
CHUNK=${CHUNK:-10000}
INTERVAL=${INTERVAL:-3}
MAX_LAG=${MAX_LAG:-30000}
SEED=${SEED:-1}
MIN_UP_MS=${MIN_UP_MS:-300}
MAX_UP_MS=${MAX_UP_MS:-4000}
WORK=${WORK:-$(mktemp -d /tmp/recstream-torture-XXXXXX)}
mkdir -p "$WORK"
RANDOM=$SEED
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ "${KEEP:-0}" == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "[$(date +%T)] $*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stat_of() { # port jq-like path (python)
  curl -fsS --max-time 5 "http://127.0.0.1:$1/v1/stats" 2>/dev/null |
    python3 -c "import json,sys; d=json.load(sys.stdin); print($2)" 2>/dev/null || echo -1
}
learned() { stat_of "$1" "sum(d['tasks'][t]['learned'] for t in ('click','purchase','rating'))"; }
lag() { stat_of "$1" "d['consumer']['total_lag']"; }

log "generating $EVENTS events (seed $SEED)"
"$BIN" gen --events "$EVENTS" --seed "$SEED" --out "$WORK/events.jsonl" >/dev/null
read -r P_CLICK P_PURCHASE P_RATING < <(python3 - "$WORK/events.jsonl" <<'PY'
import json, sys
c = {"click": 0, "purchase": 0, "rating": 0}
for line in open(sys.argv[1]):
    c[json.loads(line)["type"]] += 1
print(c["click"], c["purchase"], c["rating"])
PY
)
TOTAL=$((P_CLICK + P_PURCHASE + P_RATING))
log "produced per task: click=$P_CLICK purchase=$P_PURCHASE rating=$P_RATING"

"$BIN" broker --partitions 3 --bootstrap-file "$WORK/bootstrap" >"$WORK/broker.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -s "$WORK/bootstrap" ]] && break; sleep 0.1; done
BROKERS=$(tr -d ' \n' <"$WORK/bootstrap")
log "broker at $BROKERS"

split -l "$CHUNK" -d -a 4 "$WORK/events.jsonl" "$WORK/chunk."
(for f in "$WORK"/chunk.*; do
  "$BIN" produce --brokers "$BROKERS" --quiet "$f" >>"$WORK/produce.log" 2>&1 || exit 1
  sleep "$INTERVAL"
done) &
PRODUCER=$!
PIDS+=($PRODUCER)

PORT=$(free_port)
REF_PORT=$(free_port)
serve() { # store group port log
  "$BIN" serve --set kafka.brokers="$BROKERS" --set kafka.group_id="$2" \
    --set store.path="$1" --set store.checkpoint_interval_ms=500 \
    --set serve.listen=127.0.0.1:"$3" --set learner.threads=1 \
    >>"$4" 2>&1 &
  echo $!
}
wait_up() { # pid port [path]: until the path (/healthz) answers 200
  for _ in $(seq 1200); do
    kill -0 "$1" 2>/dev/null || return 1
    curl -fsS --max-time 1 "http://127.0.0.1:$2${3:-/healthz}" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  return 1
}

# The uninterrupted reference run, over the same stream from its start.
ref=$(serve "$WORK/ref-store" reference "$REF_PORT" "$WORK/ref.log")
PIDS+=($ref)

START=$(date +%s)
for k in $(seq "$KILLS"); do
  pid=$(serve "$WORK/store" torture "$PORT" "$WORK/serve.log")
  PIDS+=($pid)
  if ! wait_up "$pid" "$PORT"; then
    log "FAIL: restart $k did not come up (torn checkpoint?)"; tail -20 "$WORK/serve.log"; exit 1
  fi
  # Consuming again (partitions assigned) before the random delay starts.
  wait_up "$pid" "$PORT" /readyz || { log "FAIL: restart $k never became ready"; exit 1; }
  for _ in $(seq 600); do
    l=$(lag "$PORT"); [[ "$l" -ge 0 && "$l" -le "$MAX_LAG" ]] && break; sleep 0.2
  done
  up_ms=$((MIN_UP_MS + RANDOM % (MAX_UP_MS - MIN_UP_MS + 1)))
  sleep "$((up_ms / 1000)).$(printf '%03d' $((up_ms % 1000)))"
  before=$(learned "$PORT")
  kill -9 "$pid"
  # Not our child (started in a subshell): wait until it is gone.
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  producer_state=running; kill -0 "$PRODUCER" 2>/dev/null || producer_state=done
  log "kill $k/$KILLS ${up_ms} ms after ready: learned ~$before of $TOTAL (producer $producer_state)"
done
KILL_END=$(date +%s)
# The last restart, never killed: it must keep up with the rest of the stream.
pid=$(serve "$WORK/store" torture "$PORT" "$WORK/serve.log")
PIDS+=($pid)
wait_up "$pid" "$PORT" || { log "FAIL: final restart did not come up"; exit 1; }
if kill -0 "$PRODUCER" 2>/dev/null; then
  log "kills done in $((KILL_END - START)) s; waiting for the producer"
else
  log "WARNING: the producer finished before the last kill; raise INTERVAL for kills during the stream"
fi
wait "$PRODUCER" || { log "FAIL: producing the stream failed"; exit 1; }
log "stream produced in $(($(date +%s) - START)) s"

kill -0 "$pid" || { log "FAIL: the final restart died"; exit 1; }
kill -0 "$ref" || { log "FAIL: the reference run died"; exit 1; }
for _ in $(seq 1800); do
  a=$(learned "$PORT"); b=$(learned "$REF_PORT")
  [[ "$a" -ge "$TOTAL" && "$b" -ge "$TOTAL" ]] && break
  sleep 1
done
sleep 2  # anything applied twice would show now
restored=$(grep -c "restored checkpoint" "$WORK/serve.log" || true)
if grep -q "Offset out of range" "$WORK/serve.log" "$WORK/ref.log"; then
  log "INVALID: a consumer fell behind the mock broker's retention (raise INTERVAL)"
  exit 1
fi
python3 - "$PORT" "$REF_PORT" "$P_CLICK" "$P_PURCHASE" "$P_RATING" "$KILLS" "$restored" <<'PY'
import json, sys, urllib.request
port, ref_port = sys.argv[1], sys.argv[2]
produced = dict(zip(("click", "purchase", "rating"), map(int, sys.argv[3:6])))
kills, restored = int(sys.argv[6]), int(sys.argv[7])
get = lambda p: json.load(urllib.request.urlopen("http://127.0.0.1:%s/v1/stats" % p, timeout=10))
s, r = get(port), get(ref_port)
ok = True
print("kills: %d, restarts that restored a checkpoint: %d" % (kills, restored))
ok &= restored >= kills  # every restart after the first kill restored one
for t in ("click", "purchase", "rating"):
    learned, ref = s["tasks"][t]["learned"], r["tasks"][t]["learned"]
    good = learned == produced[t] and ref == produced[t]
    ok &= good
    print("%-8s produced %8d  learned %8d  (uninterrupted %8d)  %s" %
          (t, produced[t], learned, ref, "ok" if good else "MISMATCH"))
for t in ("click", "purchase"):
    a, b = s["tasks"][t]["progressive"]["auc"], r["tasks"][t]["progressive"]["auc"]
    good = abs(a - b) <= 0.005
    ok &= good
    print("%-8s progressive AUC %.5f vs uninterrupted %.5f  |diff| %.5f  %s" %
          (t, a, b, abs(a - b), "ok" if good else "TOO FAR"))
a, b = s["tasks"]["rating"]["progressive"]["mae"], r["tasks"]["rating"]["progressive"]["mae"]
print("rating   progressive MAE %.5f vs uninterrupted %.5f  |diff| %.5f" % (a, b, abs(a - b)))
print("RESULT:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
