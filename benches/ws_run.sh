#!/usr/bin/env bash
# One-command websocket benchmark: SESSIONS concurrent websockets, each doing MESSAGES
# round trips (send a text, wait for the echo), against a bare actix-web websocket echo
# server (benches/bare_ws.rs) and against the gateway's public channel websocket
# (`/ws/token/v1/{token}`, scenario `response_content = startparam(2);`), interleaved for
# ROUNDS rounds on loopback. Reports sessions held, server RSS per session, round-trip
# messages/s and p50/p99 (medians over the rounds) on stdout and in benches/RESULTS.md.
#
#   bash benches/ws_run.sh
#
# Knobs (environment): SESSIONS (10000), MESSAGES (10, per session, sequential),
# ROUNDS (1; >1 interleaves bare, gateway, bare, ... and reports medians),
# CONNECT_CONCURRENCY (500 handshakes in flight at most), WORKERS (HTTP workers of both
# servers, one per core as the gateway ships; 1 was the default until 2026-11-29),
# SCENARIO_THREADS (gateway, = WORKERS), TIMEOUT_S (per load run, 120),
# NOFILE (ulimit -n to set, 65536), BARE_PORT (18091), GATEWAY_PORT (18092).
# Raw JSON results and server logs stay in benches/out/ws-<run id>/ (git-ignored).
set -euo pipefail

SESSIONS="${SESSIONS:-10000}"
MESSAGES="${MESSAGES:-10}"
ROUNDS="${ROUNDS:-1}"
CONNECT_CONCURRENCY="${CONNECT_CONCURRENCY:-500}"
WORKERS="${WORKERS:-$(nproc)}"
SCENARIO_THREADS="${SCENARIO_THREADS:-$WORKERS}"
TIMEOUT_S="${TIMEOUT_S:-120}"
# Every session may have one message in flight on the one channel: the gateway's per-channel
# in-flight limit (channel_max_in_flight, default 512) and scenario queue (scenario_queue,
# default 4096) are raised to this so that 10,000 simultaneous messages queue instead of
# being answered `channel_busy`. `default` keeps the gateway's defaults.
GATEWAY_IN_FLIGHT="${GATEWAY_IN_FLIGHT:-20000}"
NOFILE="${NOFILE:-65536}"
BARE_PORT="${BARE_PORT:-18091}"
GATEWAY_PORT="${GATEWAY_PORT:-18092}"
COMMAND="${GATEWAY_BIN:+GATEWAY_BIN=$GATEWAY_BIN }${EXTRA_SETTINGS:+EXTRA_SETTINGS='$EXTRA_SETTINGS' }SESSIONS=$SESSIONS MESSAGES=$MESSAGES ROUNDS=$ROUNDS CONNECT_CONCURRENCY=$CONNECT_CONCURRENCY WORKERS=$WORKERS SCENARIO_THREADS=$SCENARIO_THREADS GATEWAY_IN_FLIGHT=$GATEWAY_IN_FLIGHT bash benches/ws_run.sh"
BENCH_TAG="ws-bench"
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_run_dirs ws

# --- limits -----------------------------------------------------------------------------
# Each side holds SESSIONS sockets: the client and the server (its children inherit this
# shell's limit) each need SESSIONS descriptors plus their own.
raise_fd_limit "$SESSIONS" sessions

# --- helpers --------------------------------------------------------------------------

for tool in curl python3 cargo timeout; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

# --- build --------------------------------------------------------------------------------
# GATEWAY_BIN runs that binary instead of building this tree's (an A/B of two builds).
given_or_built_gateway
log "building the baseline and the load client (cargo bench --no-run --bench bare_ws --bench ws_load)"
BARE_BIN="$(bench_exe bare_ws)"
LOAD_BIN="$(bench_exe ws_load)"

ports_free BARE_PORT GATEWAY_PORT

# --- servers ---------------------------------------------------------------------------------
GATEWAY_CONFIG="$TMP/gateway.toml"
cat >"$GATEWAY_CONFIG" <<'TOML'
access_log = false
shutdown_timeout_s = 2
# Above the 10,000 sessions of the default run (the defaults are 10,000 per channel,
# 50,000 per node): the benchmark measures the sessions, not the limit.
ws_max_sessions_per_channel = 20000
ws_max_sessions_per_node = 20000
TOML
if [[ "$GATEWAY_IN_FLIGHT" != default ]]; then
    printf 'channel_max_in_flight = %s\nscenario_queue = %s\n' "$GATEWAY_IN_FLIGHT" "$GATEWAY_IN_FLIGHT" >>"$GATEWAY_CONFIG"
fi
# The settings as the gateway gets them (start_gateway_at adds EXTRA_SETTINGS).
GATEWAY_SETTINGS="$(settings_line "$GATEWAY_CONFIG")"
GATEWAY_PID=""
start_gateway() {
    start_gateway_at "$GATEWAY_PORT" "$GATEWAY_CONFIG" "$TMP" "$OUT/gateway.log" \
        --workers "$WORKERS" --scenario-threads "$SCENARIO_THREADS"
}

create_channel() { # -> prints the token
    local response
    response="$(curl -fsS --max-time 10 -X POST "http://127.0.0.1:$GATEWAY_PORT/admin/v1/channels" \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d '{"code":"ws-echo","kind":"public","websocket_scenario":"response_content = startparam(2);"}')" \
        || die "creating the ws-echo channel failed"
    python3 -c 'import json, sys; print(json.loads(sys.argv[1])["token"])' "$response"
}

# label, url, pid, round: one load run, its JSON line in $OUT/<label>-<round>.json
run_load() {
    local label="$1" url="$2" pid="$3" round="$4" file="$OUT/$1-$4.json"
    # Probe first: one session, one round trip (also compiles the gateway's script, so
    # that the RSS measured next is the sessions' and not the first run's).
    "$LOAD_BIN" --label "$label-probe" --url "$url" --sessions 1 --messages 1 --settle-ms 0 \
        --timeout-s 15 >"$OUT/$label-$round.probe.json" 2>>"$OUT/load.log" \
        || die "probe against $label failed"
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(0 if r["round_trips"] == 1 else 1)' \
        "$OUT/$label-$round.probe.json" || die "probe against $label got no echo: $(cat "$OUT/$label-$round.probe.json")"
    log "round $round $label: $SESSIONS sessions x $MESSAGES messages (connect concurrency $CONNECT_CONCURRENCY)"
    timeout "$(( TIMEOUT_S + 30 ))" "$LOAD_BIN" --label "$label" --url "$url" --pid "$pid" \
        --sessions "$SESSIONS" --messages "$MESSAGES" \
        --connect-concurrency "$CONNECT_CONCURRENCY" --timeout-s "$TIMEOUT_S" \
        >"$file" 2> >(tee -a "$OUT/load.log" >&2) || die "ws_load against $label failed (exit $?)"
    python3 - "$file" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
print(f'[ws-bench] {r["label"]}: held {r["held_at_end"]}/{r["sessions"]} '
      f'(connect errors {r["connect_errors"]}, lost {r["lost"]}, failed {r["sessions_failed"]}), '
      f'echoes {r["round_trips"]}/{r["round_trips_expected"]}, other replies {r["other_replies"]} {r["other_reply_kinds"] or ""}, '
      f'{r["rss_per_conn_kib"]} KiB/session, {r["msgs_per_s"]:.0f} msgs/s, '
      f'p50 {r["p50_ms"]} ms, p99 {r["p99_ms"]} ms, CPU per message: server '
      f'{r["server_cpu_us_per_message"]} us, client {r["client_cpu_us_per_message"]} us'
      + (" TIMED OUT" if r["timed_out"] else ""))
PY
}

# --- rounds ----------------------------------------------------------------------------------
log "run ws-$RUN_ID: $ROUNDS round(s) x (bare, gateway), $SESSIONS sessions x $MESSAGES messages, $WORKERS worker(s)"
TOKEN=""
for round in $(seq 1 "$ROUNDS"); do
    start_bare
    run_load bare "ws://127.0.0.1:$BARE_PORT/ws/token/v1/bench" "$BARE_PID" "$round"
    stop_pid "$BARE_PID"

    # The gateway restarts each round on the same data dir (the channel persists).
    start_gateway
    [[ -n "$TOKEN" ]] || TOKEN="$(create_channel)"
    [[ -n "$TOKEN" ]] || die "no channel token"
    run_load gateway "ws://127.0.0.1:$GATEWAY_PORT/ws/token/v1/$TOKEN" "$GATEWAY_PID" "$round"
    stop_pid "$GATEWAY_PID"
done

# --- report ----------------------------------------------------------------------------------
MACHINE="$(machine_line)"
COMMIT="$(commit_line)"
LIMITS="ulimit -n $(ulimit -n), ephemeral ports $PORT_LO-$PORT_HI, somaxconn $(cat /proc/sys/net/core/somaxconn)"
status=0
python3 - "$OUT" "$ROUNDS" "$ROOT/benches/RESULTS.md" "$(date -u '+%Y-%m-%d %H:%M UTC')" \
    "$MACHINE" "$COMMAND" "$COMMIT" "$LIMITS" "$SESSIONS" "$MESSAGES" "$CONNECT_CONCURRENCY" \
    "$WORKERS" "$SCENARIO_THREADS" "$GATEWAY_SETTINGS" <<'PY' || status=$?
import json, os, statistics, sys
sys.path.insert(0, os.environ["BENCHES_DIR"])
from results_md import append_section, print_problems
(out, rounds, results, date, machine, command, commit, limits, sessions, messages,
 concurrency, workers, scenario_threads, gateway_settings) = sys.argv[1:15]
rounds, sessions, messages = int(rounds), int(sessions), int(messages)
labels = [("bare", "bare actix-web websocket echo (baseline)"),
          ("gateway", "gateway, public channel `response_content = startparam(2);`")]
runs, med, problems = {}, {}, []
for key, _ in labels:
    runs[key] = [json.load(open(os.path.join(out, f"{key}-{i}.json"))) for i in range(1, rounds + 1)]
    for i, r in enumerate(runs[key], 1):
        where = f"{key} round {i}"
        if r["timed_out"]:
            problems.append(f"{where}: timed out")
        if r["connect_errors"]:
            problems.append(f"{where}: {r['connect_errors']} connect errors {r['connect_error_kinds']}")
        if r["held_at_end"] != sessions:
            problems.append(f"{where}: {r['held_at_end']} of {sessions} sessions held at the end "
                            f"(lost {r['lost']} {r['lost_kinds']}, failed {r['sessions_failed']} {r['failed_kinds']})")
        if r["other_replies"]:
            problems.append(f"{where}: {r['other_replies']} replies were not the echo {r['other_reply_kinds']}")
        if r["round_trips"] != sessions * messages:
            problems.append(f"{where}: {r['round_trips']} of {sessions * messages} round trips")
    m = lambda f: statistics.median(r[f] for r in runs[key] if r[f] is not None) \
        if any(r[f] is not None for r in runs[key]) else float("nan")
    med[key] = {f: m(f) for f in ["held_at_end", "rss_per_conn_kib", "rss_per_conn_after_messages_kib",
                                  "msgs_per_s", "p50_ms", "p99_ms", "connect_s",
                                  "server_cpu_us_per_message", "client_cpu_us_per_message"]}
    med[key]["runs"] = [r["msgs_per_s"] for r in runs[key]]
    med[key]["rss"] = [(r["rss_before_kib"], r["rss_held_kib"], r["rss_after_messages_kib"]) for r in runs[key]]

rows = []
for key, name in labels:
    x = med[key]
    rows.append(f'| {name} | {x["held_at_end"]:,.0f} / {sessions:,} | {x["rss_per_conn_kib"]:.1f} | '
                f'{x["rss_per_conn_after_messages_kib"]:.1f} | {x["msgs_per_s"]:,.0f} | '
                f'{x["p50_ms"]:.1f} | {x["p99_ms"]:.1f} | {x["connect_s"]:.1f} | '
                + ", ".join(f"{v:,.0f}" for v in x["runs"]) + " |")
ratio = med["gateway"]["msgs_per_s"] / med["bare"]["msgs_per_s"] if med["bare"]["msgs_per_s"] else float("nan")
rss_ratio = (med["gateway"]["rss_per_conn_kib"] / med["bare"]["rss_per_conn_kib"]
             if med["bare"]["rss_per_conn_kib"] else float("nan"))
table = "\n".join([
    "| server | sessions held | RSS/conn KiB (held, idle) | RSS/conn KiB (after messages) | msgs/s | p50 ms | p99 ms | connect s | msgs/s per round |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    *rows,
    "",
    f"gateway / bare: msgs/s **{ratio:.0%}**, RSS per session {rss_ratio:.1f}x.",
    "",
    "CPU per round trip over the round trips (medians, µs): "
    + "; ".join(f'{name}: server {med[key]["server_cpu_us_per_message"]:.1f}, '
                f'load client {med[key]["client_cpu_us_per_message"]:.1f}' for key, name in labels) + ".",
])
rss_lines = "\n".join(
    f"  - {key}: RSS before / held / after messages (KiB): "
    + "; ".join(f"{b:,} / {h:,} / {a:,}" for b, h, a in med[key]["rss"]) for key, _ in labels)
print()
print(table)
print()
print_problems(problems)

section = f"""
## Websocket: {sessions:,} sessions x {messages} round trips ({date})

- machine: {machine}
- commit: {commit}
- command: `{command}`
- limits: {limits}
- servers: {workers} HTTP worker(s) each; gateway with SQLite in a temp dir, `log_level = warn`, {gateway_settings}, {scenario_threads} scenario thread(s), default heartbeat (ping every 10 s)
- load: `ws_load` (Rust, tokio-tungstenite, one thread, on the same machine): {sessions:,} sessions opened with at most {concurrency} handshakes in flight and held; then all of them at once do {messages} sequential round trips each (text frame, wait for the same text back); latency is per round trip. RSS is the server's `VmRSS`: (RSS with every session held, 1 s after the last handshake - RSS before connecting) / sessions; "after messages" is the same with the RSS read once every round trip is done. {rounds} interleaved round(s), medians
{rss_lines}

{table}
"""
sys.exit(append_section(results, "# Benchmark results\n", section, problems))
PY
report_done "$status" "raw JSON results and server logs"
