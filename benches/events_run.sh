#!/usr/bin/env bash
# One-command event fan-out benchmark: SUBSCRIBERS websocket subscriptions to one eventing
# channel (`/ws/token/v1/{token}/subscribe`), then EVENTS events published one at a time
# through `POST /admin/v1/events`, each waited for at every subscriber before the next.
# Runs against the gateway on SQLite and on PostgreSQL, one at a time, on loopback.
# Reports fan-out latency (POST sent -> event frame read, per subscriber and event)
# p50/p99/max, the complete fan-out (last subscriber) p50 and the publish ack p50, on
# stdout and in benches/RESULTS.md.
#
#   bash benches/events_run.sh
#
# Knobs (environment): SUBSCRIBERS (10000), EVENTS (20, measured), WARMUP_EVENTS (1,
# published and checked first, not measured), CONNECT_CONCURRENCY (500 handshakes +
# subscribes in flight at most), SOURCE_ADDRESSES (connections come from 127.0.0.1 ..
# 127.0.0.N; one per 20,000 subscribers), WORKERS (gateway HTTP workers, 1), SCENARIO_THREADS (1),
# BACKENDS ("sqlite postgres"), TIMEOUT_S (bound of each load run, 180), EVENT_TIMEOUT_S
# (bound of each event's fan-out, 30), NOFILE (ulimit -n to ask for, 65536), PG_HOST
# (127.0.0.1), PG_PORT (5432), PG_USER (postgres, trust auth), PG_ADMIN_DB (test, the
# database psql connects to for CREATE/DROP DATABASE), SQLITE_PORT (18101),
# POSTGRES_PORT (18102), GATEWAY_BIN (a built gateway to run instead of this tree's release).
# Raw JSON results and gateway logs stay in benches/out/events-<run id>/ (git-ignored).
set -euo pipefail

SUBSCRIBERS="${SUBSCRIBERS:-10000}"
EVENTS="${EVENTS:-20}"
WARMUP_EVENTS="${WARMUP_EVENTS:-1}"
CONNECT_CONCURRENCY="${CONNECT_CONCURRENCY:-500}"
# One source address per 20,000 subscribers (ephemeral ports run out near 28,000).
SOURCE_ADDRESSES="${SOURCE_ADDRESSES:-$(( (SUBSCRIBERS + 19999) / 20000 ))}"
WORKERS="${WORKERS:-1}"
SCENARIO_THREADS="${SCENARIO_THREADS:-1}"
BACKENDS="${BACKENDS:-sqlite postgres}"
TIMEOUT_S="${TIMEOUT_S:-180}"
EVENT_TIMEOUT_S="${EVENT_TIMEOUT_S:-30}"
NOFILE="${NOFILE:-65536}"
PG_HOST="${PG_HOST:-127.0.0.1}"
PG_PORT="${PG_PORT:-5432}"
PG_USER="${PG_USER:-postgres}"
PG_ADMIN_DB="${PG_ADMIN_DB:-test}"
SQLITE_PORT="${SQLITE_PORT:-18101}"
POSTGRES_PORT="${POSTGRES_PORT:-18102}"
COMMAND="${GATEWAY_BIN:+GATEWAY_BIN=$GATEWAY_BIN }${EXTRA_SETTINGS:+EXTRA_SETTINGS='$EXTRA_SETTINGS' }SUBSCRIBERS=$SUBSCRIBERS EVENTS=$EVENTS WARMUP_EVENTS=$WARMUP_EVENTS CONNECT_CONCURRENCY=$CONNECT_CONCURRENCY SOURCE_ADDRESSES=$SOURCE_ADDRESSES WORKERS=$WORKERS SCENARIO_THREADS=$SCENARIO_THREADS bash benches/events_run.sh"
PG_DB="oktell_bench_$$"
BENCH_TAG="events-bench"
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_run_dirs events

# --- limits -----------------------------------------------------------------------------
# The client and the gateway (a child of this shell: it inherits the limit) each hold
# SUBSCRIBERS sockets plus their own descriptors.
raise_fd_limit "$SUBSCRIBERS" subscribers

# --- helpers --------------------------------------------------------------------------

for tool in curl python3 cargo timeout; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
check_backends

# --- build --------------------------------------------------------------------------------
# GATEWAY_BIN runs that binary instead of building this tree's (an A/B of two builds).
given_or_built_gateway
log "building the client (cargo bench --no-run --bench event_fanout)"
LOAD_BIN="$(bench_exe event_fanout)"

# --- gateway -------------------------------------------------------------------------------
GATEWAY_CONFIG="$TMP/gateway.toml"
cat >"$GATEWAY_CONFIG" <<'TOML'
access_log = false
shutdown_timeout_s = 2
TOML
GATEWAY_SETTINGS="$(settings_line "$GATEWAY_CONFIG")"


create_channel() { # port -> prints the token
    local response
    response="$(curl -fsS --max-time 10 -X POST "http://127.0.0.1:$1/admin/v1/channels" \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d '{"code":"bench-feed","kind":"eventing"}')" \
        || die "creating the bench-feed eventing channel failed"
    python3 -c 'import json, sys; print(json.loads(sys.argv[1])["token"])' "$response"
}

run_backend() { # backend, port, database url
    local backend="$1" port="$2" url="$3" file="$OUT/$1.json" token
    start_backend_gateway "$backend" "$port" "$url"
    token="$(create_channel "$port")"
    [[ -n "$token" ]] || die "no channel token ($backend)"
    # Probe: one subscriber, one event (checks the path end to end before the big run).
    "$LOAD_BIN" --label "$backend-probe" --base "http://127.0.0.1:$port" --token "$token" \
        --admin-token "$ADMIN_TOKEN" --subscribers 1 --events 1 --warmup-events 0 \
        --settle-ms 0 --timeout-s 20 --event-timeout-s 10 \
        >"$OUT/$backend.probe.json" 2>>"$OUT/load.log" || die "probe against $backend failed"
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(0 if r["deliveries"] == 1 and r["held_at_end"] == 1 else 1)' \
        "$OUT/$backend.probe.json" || die "probe against $backend got no event: $(cat "$OUT/$backend.probe.json")"
    log "$backend: $SUBSCRIBERS subscribers, $WARMUP_EVENTS warm-up + $EVENTS events (connect concurrency $CONNECT_CONCURRENCY)"
    timeout "$(( TIMEOUT_S + 30 ))" "$LOAD_BIN" --label "$backend" --base "http://127.0.0.1:$port" \
        --token "$token" --admin-token "$ADMIN_TOKEN" --pid "$GATEWAY_PID" \
        --subscribers "$SUBSCRIBERS" --events "$EVENTS" --warmup-events "$WARMUP_EVENTS" \
        --connect-concurrency "$CONNECT_CONCURRENCY" --source-addresses "$SOURCE_ADDRESSES" \
        --timeout-s "$TIMEOUT_S" --event-timeout-s "$EVENT_TIMEOUT_S" \
        >"$file" 2> >(tee -a "$OUT/load.log" >&2) || die "event_fanout against $backend failed (exit $?)"
    python3 - "$file" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
print(f'[events-bench] {r["label"]}: held {r["held_at_end"]}/{r["subscribers"]} '
      f'(connect errors {r["connect_errors"]}, subscribe errors {r["subscribe_errors"]}, lost {r["lost"]}), '
      f'deliveries {r["deliveries"]}/{r["deliveries_expected"]}, fan-out p50 {r["fanout_p50_ms"]} ms, '
      f'p99 {r["fanout_p99_ms"]} ms, max {r["fanout_max_ms"]} ms, complete p50 {r["complete_p50_ms"]} ms, '
      f'ack p50 {r["ack_p50_ms"]} ms; CPU per event: gateway {r["server_cpu_ms_per_event"]} ms, '
      f'client {r["client_cpu_ms_per_event"]} ms' + (" TIMED OUT" if r["timed_out"] else ""))
PY
    stop_pid "$GATEWAY_PID"
}

# --- runs ------------------------------------------------------------------------------------
log "run events-$RUN_ID: backends $BACKENDS; $SUBSCRIBERS subscribers x $EVENTS events, $WORKERS worker(s)"
run_backends

# --- report ----------------------------------------------------------------------------------
MACHINE="$(machine_line)"
COMMIT="$(commit_line)"
LIMITS="ulimit -n $(ulimit -n), ephemeral ports $PORT_LO-$PORT_HI, somaxconn $(cat /proc/sys/net/core/somaxconn)"
PG_VERSION=""
if [[ " $BACKENDS " == *" postgres "* ]]; then
    PG_VERSION="$(psql -X -At -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_ADMIN_DB" -c 'SHOW server_version' 2>/dev/null | head -1 | awk '{print $1}')"
fi
status=0
python3 - "$OUT" "$ROOT/benches/RESULTS.md" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$MACHINE" \
    "$COMMAND" "$COMMIT" "$LIMITS" "$SUBSCRIBERS" "$EVENTS" "$WARMUP_EVENTS" \
    "$CONNECT_CONCURRENCY" "$WORKERS" "$SCENARIO_THREADS" "$GATEWAY_SETTINGS" "$BACKENDS" \
    "$PG_VERSION" "$PG_HOST:$PG_PORT" <<'PY' || status=$?
import json, os, sys
sys.path.insert(0, os.environ["BENCHES_DIR"])
from results_md import append_section, print_problems
(out, results, date, machine, command, commit, limits, subscribers, events, warmup,
 concurrency, workers, scenario_threads, gateway_settings, backends, pg_version,
 pg_addr) = sys.argv[1:18]
subscribers, events, warmup = int(subscribers), int(events), int(warmup)
names = {"sqlite": "SQLite (file in a temp dir)",
         "postgres": f"PostgreSQL {pg_version} ({pg_addr}, fresh database)".replace("  ", " ")}
problems, rows, details = [], [], []
fmt = lambda v: "n/a" if v is None else f"{v:,.1f}"
for key in backends.split():
    r = json.load(open(os.path.join(out, f"{key}.json")))
    where = key
    if r["timed_out"]:
        problems.append(f"{where}: timed out")
    if r["connect_errors"] or r["subscribe_errors"]:
        problems.append(f"{where}: {r['connect_errors']} connect errors {r['connect_error_kinds']}, "
                        f"{r['subscribe_errors']} subscribe errors {r['subscribe_error_kinds']}")
    if r["held_at_end"] != subscribers:
        problems.append(f"{where}: {r['held_at_end']} of {subscribers} subscribers held at the end "
                        f"(lost {r['lost']} {r['lost_kinds']})")
    if r["publish_errors"]:
        problems.append(f"{where}: publish errors {r['publish_errors']}")
    if r["events_incomplete"]:
        problems.append(f"{where}: events not delivered to every subscriber: {r['events_incomplete']}")
    if r["deliveries"] != r["deliveries_expected"]:
        problems.append(f"{where}: {r['deliveries']} of {r['deliveries_expected']} deliveries")
    if r["subscribers_missing_events"]:
        problems.append(f"{where}: {r['subscribers_missing_events']} held subscribers missed an event")
    for field in ["duplicates", "out_of_order", "id_mismatch", "unknown_k"]:
        if r[field]:
            problems.append(f"{where}: {r[field]} {field.replace('_', ' ')}")
    if r["other_frames"]:
        problems.append(f"{where}: {r['other_frames']} other frames {r['other_frame_kinds']}")
    rows.append(f'| {names[key]} | {r["held_at_end"]:,} / {subscribers:,} | {r["published"] - warmup} | '
                f'{fmt(r["fanout_p50_ms"])} | {fmt(r["fanout_p99_ms"])} | {fmt(r["fanout_max_ms"])} | '
                f'{fmt(r["complete_p50_ms"])} | {fmt(r["ack_p50_ms"])} |')
    per_event = ", ".join(fmt(v) for v in r["complete_ms_per_event"])
    rss = "" if r["rss_before_kib"] is None else (
        f'; gateway RSS before / subscribers held / after (KiB): {r["rss_before_kib"]:,} / '
        f'{r["rss_held_kib"]:,} / {r["rss_after_kib"]:,}'
        + (f'; {(r["rss_held_kib"] - r["rss_before_kib"]) / r["held_at_end"]:.1f} KiB per subscriber held'
           if r.get("held_at_end") else ''))
    details.append(f'  - {key}: subscribed in {r["subscribe_s"]} s; deliveries {r["deliveries"]:,} / '
                   f'{r["deliveries_expected"]:,}; fan-out p90 {fmt(r["fanout_p90_ms"])} ms; '
                   f'complete fan-out max {fmt(r["complete_max_ms"])} ms, per event (ms): {per_event}; '
                   f'warm-up event complete (ms): {", ".join(fmt(v) for v in r["warmup_complete_ms"]) or "none"}; '
                   f'publish ack p99 {fmt(r["ack_p99_ms"])} ms; CPU per published event (ms): '
                   f'gateway {fmt(r["server_cpu_ms_per_event"])}, load client {fmt(r["client_cpu_ms_per_event"])}{rss}')
table = "\n".join([
    "| backend | subscribers held | events | fan-out p50 ms | p99 ms | max ms | complete fan-out p50 ms | publish ack p50 ms |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
    *rows,
])
print()
print(table)
print()
print_problems(problems)
details_text = "\n".join(details)
section = f"""
## Events: one event to {subscribers:,} websocket subscribers ({date})

- machine: {machine}
- commit: {commit}
- command: `{command}`
- limits: {limits}
- gateway: release build, {workers} HTTP worker(s), {scenario_threads} scenario thread(s), `log_level = warn`, {gateway_settings}; one eventing channel (`{{"code":"bench-feed","kind":"eventing"}}`, every type)
- load: `event_fanout` (Rust, tokio-tungstenite + awc, one thread, on the same machine): {subscribers:,} websockets to `/ws/token/v1/{{token}}/subscribe`, at most {concurrency} handshakes + `subscribe` in flight, each waits for `subscribed`; then {warmup} warm-up event(s) (checked, not measured) and {events} events published one at a time with `POST /admin/v1/events` (`{{"type":"bench.tick","data":{{"k":k,"sent_ns":...}}}}`), each awaited at every subscriber before the next. Fan-out latency: from just before the POST to the event frame read by that subscriber (one monotonic clock, the client's), over all (subscriber, event) pairs; complete fan-out: the last subscriber's latency of an event, p50 over the events; publish ack: POST to its 201 read.
{details_text}

{table}
"""
sys.exit(append_section(results, "# Benchmark results\n", section, problems))
PY
report_done "$status" "raw JSON results and gateway logs"
