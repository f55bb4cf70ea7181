#!/usr/bin/env bash
# Soak benchmark (#15 item 4): DURATION_S (600) of mixed load on one release gateway
# (SQLite in a temp dir), on loopback, with the gateway's RSS and open descriptors sampled
# every INTERVAL_S (10) s. The client is `soak_load.rs`; at once:
#   - webhooks at WEBHOOK_RATE/s (open loop, shared/fixed_rate.rs) to a public channel
#     (`wait_for_completion`, scenario `response_content = "ok";`), p99 per interval;
#   - WS_SESSIONS websocket sessions to the same channel (scenario echoes the message),
#     each WS_MESSAGES round trips WS_GAP_MS apart, then closed and opened anew;
#   - EVENT_RATE events/s published with `POST /admin/v1/events`, delivered by the
#     gateway to SUBSCRIPTIONS webhook subscriptions on `webhook_sink` (which verifies
#     every signature); after the load, every delivery is waited for.
# After WARMUP_S (120) the least-squares slopes of RSS (MB/min, MB = 10^6 bytes) and
# descriptors (per minute) are fitted; PASS when RSS grows < 1 MB/min and descriptors
# do not grow (slope < FD_SLOPE_MAX = 0.5/min, and back to their idle count, give or take
# the database pool's, once the load has stopped). benches/soak_report.py appends a
# section with the samples to benches/RESULTS.md; raw JSON lines and logs stay in
# benches/out/soak-<run id>/. Exit status 1 on FAIL or on errors.
#
#   bash benches/soak_run.sh                 # 10 minutes
#   DURATION_S=60 WARMUP_S=20 bash benches/soak_run.sh   # a short trial
#
# Knobs: DURATION_S (600), INTERVAL_S (10), WARMUP_S (120), WEBHOOK_RATE (200),
# WEBHOOK_CONNECTIONS (16), EVENT_RATE (20), SUBSCRIPTIONS (2), WS_SESSIONS (50),
# WS_MESSAGES (20), WS_GAP_MS (250), FD_SLOPE_MAX (0.5), WORKERS (1), SCENARIO_THREADS (1),
# PORT (18141), SINK_PORT (18142), GATEWAY_BIN (run that binary instead of building this
# tree's). Bounded: the client is stopped DURATION_S + 60 s after it starts, the wait for
# deliveries after DRAIN_TIMEOUT_S (120).
set -euo pipefail

DURATION_S="${DURATION_S:-600}"
INTERVAL_S="${INTERVAL_S:-10}"
WARMUP_S="${WARMUP_S:-120}"
WEBHOOK_RATE="${WEBHOOK_RATE:-200}"
WEBHOOK_CONNECTIONS="${WEBHOOK_CONNECTIONS:-16}"
EVENT_RATE="${EVENT_RATE:-20}"
SUBSCRIPTIONS="${SUBSCRIPTIONS:-2}"
WS_SESSIONS="${WS_SESSIONS:-50}"
WS_MESSAGES="${WS_MESSAGES:-20}"
WS_GAP_MS="${WS_GAP_MS:-250}"
FD_SLOPE_MAX="${FD_SLOPE_MAX:-0.5}"
WORKERS="${WORKERS:-1}"
SCENARIO_THREADS="${SCENARIO_THREADS:-1}"
PORT="${PORT:-18141}"
SINK_PORT="${SINK_PORT:-18142}"
DRAIN_TIMEOUT_S="${DRAIN_TIMEOUT_S:-120}"
GATEWAY_BIN="${GATEWAY_BIN:-}"
ADMIN_TOKEN="bench-admin-token-0123456789"
STARTUP_TIMEOUT_S=30

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND="${GATEWAY_BIN:+GATEWAY_BIN=$GATEWAY_BIN }DURATION_S=$DURATION_S INTERVAL_S=$INTERVAL_S WARMUP_S=$WARMUP_S WEBHOOK_RATE=$WEBHOOK_RATE WEBHOOK_CONNECTIONS=$WEBHOOK_CONNECTIONS EVENT_RATE=$EVENT_RATE SUBSCRIPTIONS=$SUBSCRIPTIONS WS_SESSIONS=$WS_SESSIONS WS_MESSAGES=$WS_MESSAGES WS_GAP_MS=$WS_GAP_MS WORKERS=$WORKERS SCENARIO_THREADS=$SCENARIO_THREADS bash benches/soak_run.sh"
RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$ROOT/benches/out/soak-$RUN_ID"
mkdir -p "$OUT"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/oktell-soakbench.XXXXXX")"
BENCH_TAG="soak-bench"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

for tool in curl python3 cargo timeout; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
(( DURATION_S > WARMUP_S + 2 * INTERVAL_S )) \
    || die "DURATION_S must leave at least 3 samples after WARMUP_S"
port_in_use "$PORT" && die "port $PORT is in use (set PORT)"

given_or_built_gateway
log "building the load client and the receiver (cargo bench --no-run)"
CLIENT="$(bench_exe soak_load)"
SINK_BIN="$(bench_exe webhook_sink)"

CONFIG="$TMP/gateway.toml"
cat >"$CONFIG" <<'TOML'
access_log = false
shutdown_timeout_s = 2
TOML

start_sink_at "$SINK_PORT" "$OUT/sink.log"
mkdir -p "$TMP/data"
start_gateway_at "$PORT" "$CONFIG" "$TMP/data" "$OUT/gateway.log" \
    --workers "$WORKERS" --scenario-threads "$SCENARIO_THREADS" --allow-private-targets
PUBLIC="$(create_channel_json "$PORT" '{"code":"soak","kind":"public","wait_for_completion":true,"webhook_scenario":"response_content = \"ok\";","websocket_scenario":"response_content = startparam(2);"}')"
FEED="$(create_channel_json "$PORT" '{"code":"soak-feed","kind":"eventing"}')"
for k in $(seq 1 "$SUBSCRIPTIONS"); do
    subscribe_sink "$PORT" "$FEED" "$SINK_PORT" "s$k"
done

# One progress line per sample, on stderr.
cat >"$TMP/progress.py" <<'PY'
import json, sys
for line in sys.stdin:
    s = json.loads(line)
    if "i" in s:
        w, ws = s["webhooks"], s["ws"]
        print(f"[soak-bench] t {s['t_s']:7.1f} s  RSS {s['rss_kib'] / 1024:7.1f} MiB  fds {s['fds']:4}  "
              f"webhook p99 {w['p99_ms']} ms  ws round trips {ws['round_trips']}", file=sys.stderr, flush=True)
PY
log "run soak-$RUN_ID: $DURATION_S s; webhooks $WEBHOOK_RATE/s, events $EVENT_RATE/s to $SUBSCRIPTIONS subscription(s), $WS_SESSIONS websocket sessions of $WS_MESSAGES messages $WS_GAP_MS ms apart; samples every $INTERVAL_S s"
timeout "$(( DURATION_S + 60 ))" "$CLIENT" --pid "$GATEWAY_PID" \
    --webhook-url "http://127.0.0.1:$PORT/api/token/v1/$PUBLIC" \
    --event-url "http://127.0.0.1:$PORT/admin/v1/events" --admin-token "$ADMIN_TOKEN" \
    --ws-url "ws://127.0.0.1:$PORT/ws/token/v1/$PUBLIC" \
    --duration-s "$DURATION_S" --interval-s "$INTERVAL_S" \
    --webhook-rate "$WEBHOOK_RATE" --webhook-connections "$WEBHOOK_CONNECTIONS" \
    --event-rate "$EVENT_RATE" --ws-sessions "$WS_SESSIONS" --ws-messages "$WS_MESSAGES" \
    --ws-gap-ms "$WS_GAP_MS" | tee "$OUT/samples.jsonl" | python3 "$TMP/progress.py" \
    || die "the load client failed (samples so far: $OUT/samples.jsonl)"
alive "$GATEWAY_PID" || die "the gateway died during the soak (log: $OUT/gateway.log)"

# Every acknowledged event delivered to every subscription (bounded).
EVENTS_OK="$(python3 -c 'import json, sys; print([json.loads(l) for l in open(sys.argv[1])][-1]["totals"]["events_ok"])' "$OUT/samples.jsonl")"
EXPECTED=$(( EVENTS_OK * SUBSCRIPTIONS ))
deadline=$(( SECONDS + DRAIN_TIMEOUT_S ))
while (( SECONDS < deadline )); do
    received="$(json_field "$(curl -fsS --max-time 5 "http://127.0.0.1:$SINK_PORT/count")" received)"
    (( received >= EXPECTED )) && break
    sleep 0.5
done
curl -fsS --max-time 10 "http://127.0.0.1:$SINK_PORT/stats" >"$OUT/sink-stats.json" || die "no receiver stats"
log "deliveries: expected $EXPECTED, receiver: $(python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print(s["received"], "received,", s["distinct_ids"], "distinct ids,", s["bad_signature"], "bad signatures")' "$OUT/sink-stats.json")"
stop_pid "$GATEWAY_PID"
stop_pid "$SINK_PID"

status=0
python3 "$ROOT/benches/soak_report.py" "$OUT" "$ROOT/benches/RESULTS.md" "$(date -u '+%Y-%m-%d %H:%M UTC')" \
    "$(machine_line)" "$COMMAND" "$(commit_line)" "$DURATION_S" "$WARMUP_S" "$FD_SLOPE_MAX" "$EXPECTED" \
    "$SUBSCRIPTIONS" "$WORKERS" "$SCENARIO_THREADS" || status=$?
log "raw samples and logs: $OUT; appended to benches/RESULTS.md"
(( status == 0 )) || die "the soak failed (see above)"
