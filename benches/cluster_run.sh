#!/usr/bin/env bash
# One-command cluster benchmark (issue #12): NODES gateway nodes of one domain on a fresh
# PostgreSQL database, all on this machine's loopback, measuring what crosses nodes:
#
#   1. propagation: CHANGES channel updates made through node 1, one after the other,
#      each polled on every other node until it is live (cluster_probe propagation);
#   2. cross-node ws_send: SESSIONS websockets on node 2, MESSAGES webhooks to node 1
#      whose scenario ws_send-s to one of them; then the same with the webhooks sent to
#      node 2 itself (the session is local): the baseline of the same run;
#   3. event fan-out across the nodes: SUBSCRIBERS event subscribers spread round robin
#      over all nodes, EVENTS events published through node 1 (event_fanout);
#   4. webhooks (wait on, trivial script) through node 1 alone, then through every node
#      at once (one wrk per node, CONNECTIONS split between them), DURATION each;
#   5. the notification rate the nodes sustain: pgbench sends `events` notes with
#      pg_notify for NOTIFY_SECONDS (NOTIFY_CLIENTS connections); reported: notes sent/s,
#      notes applied/s by node 2 (its oktell_cluster_notes_total) and the server's
#      notification queue usage at the end.
#
#   bash benches/cluster_run.sh
#
# Knobs (environment): NODES (3), CHANGES (100), SESSIONS (100), MESSAGES (20000),
# CONCURRENCY (32, callers of row 2), SUBSCRIBERS (3000), EVENTS (20), CONNECTIONS (64),
# DURATION (10s), NOTIFY_SECONDS (10), NOTIFY_CLIENTS (4), WORKERS (1 HTTP worker per
# node), SCENARIO_THREADS (1 per node), PG_HOST/PG_PORT/PG_USER/PG_ADMIN_DB (127.0.0.1,
# 5432, postgres, test), BASE_PORT (18301: nodes on BASE_PORT, +1, ...).
# Raw results stay in benches/out/cluster-<run id>/ (git-ignored).
#
# On a 2-core machine the nodes, PostgreSQL and the load clients share two cores: rows 3
# and 4 show what the cluster costs, not what more machines would add.
set -euo pipefail

NODES="${NODES:-3}"
CHANGES="${CHANGES:-100}"
SESSIONS="${SESSIONS:-100}"
MESSAGES="${MESSAGES:-20000}"
CONCURRENCY="${CONCURRENCY:-32}"
SUBSCRIBERS="${SUBSCRIBERS:-3000}"
EVENTS="${EVENTS:-20}"
CONNECTIONS="${CONNECTIONS:-64}"
DURATION="${DURATION:-10s}"
NOTIFY_SECONDS="${NOTIFY_SECONDS:-10}"
NOTIFY_CLIENTS="${NOTIFY_CLIENTS:-4}"
WORKERS="${WORKERS:-1}"
SCENARIO_THREADS="${SCENARIO_THREADS:-1}"
PG_HOST="${PG_HOST:-127.0.0.1}"
PG_PORT="${PG_PORT:-5432}"
PG_USER="${PG_USER:-postgres}"
PG_ADMIN_DB="${PG_ADMIN_DB:-test}"
BASE_PORT="${BASE_PORT:-18301}"
NOFILE="${NOFILE:-65536}"
THREADS=1
WARMUP=1s
ADMIN_TOKEN="bench-admin-token-0123456789"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND="NODES=$NODES CHANGES=$CHANGES SESSIONS=$SESSIONS MESSAGES=$MESSAGES CONCURRENCY=$CONCURRENCY SUBSCRIBERS=$SUBSCRIBERS EVENTS=$EVENTS CONNECTIONS=$CONNECTIONS DURATION=$DURATION NOTIFY_SECONDS=$NOTIFY_SECONDS NOTIFY_CLIENTS=$NOTIFY_CLIENTS WORKERS=$WORKERS SCENARIO_THREADS=$SCENARIO_THREADS bash benches/cluster_run.sh"
RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$ROOT/benches/out/cluster-$RUN_ID"
mkdir -p "$OUT"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/oktell-clusterbench.XXXXXX")"
PG_DB="oktell_cluster_bench_$$"

BENCH_TAG="cluster-bench"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

(( NODES >= 2 )) || die "NODES must be at least 2"
raise_fd_limit "$SUBSCRIBERS" subscribers
ensure_wrk psql pgbench
psql_admin 'SELECT 1' >/dev/null || die "cannot reach PostgreSQL at $PG_USER@$PG_HOST:$PG_PORT/$PG_ADMIN_DB"

build_gateway
PROBE="$(bench_exe cluster_probe)"
FANOUT="$(bench_exe event_fanout)"

psql_admin "CREATE DATABASE $PG_DB" >/dev/null
PG_CREATED=1
export GATEWAY_DB_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB"

cat >"$TMP/gateway.toml" <<TOML
log_level = "warn"
access_log = false
shutdown_timeout_s = 2
workers = $WORKERS
scenario_threads = $SCENARIO_THREADS
channel_max_in_flight = 20000
ws_max_subscribers_per_channel = 100000
ws_max_subscribers_per_node = 100000
TOML

declare -a BASES NODE_PIDS
for i in $(seq 1 "$NODES"); do
    port=$(( BASE_PORT + i - 1 ))
    port_in_use "$port" && die "port $port is taken (BASE_PORT)"
    mkdir -p "$TMP/node-$i"
    start_gateway_at "$port" "$TMP/gateway.toml" "$TMP/node-$i" "$OUT/node-$i.log" --node-id "node-$i"
    BASES+=("http://127.0.0.1:$port")
    NODE_PIDS+=("$GATEWAY_PID")
done
log "nodes: ${BASES[*]}"
others="$(IFS=,; echo "${BASES[*]:1}")"
all="$(IFS=,; echo "${BASES[*]}")"

# 1. propagation
log "1. propagation of $CHANGES changes"
"$PROBE" propagation --admin "${BASES[0]}" --watch "$others" --admin-token "$ADMIN_TOKEN" \
    --changes "$CHANGES" --label propagation >"$OUT/propagation.json" \
    || die "propagation: $(cat "$OUT/propagation.json")"

# 2. cross-node ws_send, and the same-node baseline
log "2. ws_send: $MESSAGES pushes to $SESSIONS sessions on node 2, callers on node 1 then node 2"
"$PROBE" ws-send --admin "${BASES[0]}" --caller "${BASES[0]}" --holders "${BASES[1]}" \
    --admin-token "$ADMIN_TOKEN" --sessions "$SESSIONS" --messages "$MESSAGES" \
    --concurrency "$CONCURRENCY" --label cross-node >"$OUT/ws-send-cross.json" \
    || die "ws-send: $(cat "$OUT/ws-send-cross.json")"
"$PROBE" ws-send --admin "${BASES[0]}" --caller "${BASES[1]}" --holders "${BASES[1]}" \
    --admin-token "$ADMIN_TOKEN" --sessions "$SESSIONS" --messages "$MESSAGES" \
    --concurrency "$CONCURRENCY" --label same-node >"$OUT/ws-send-local.json" \
    || die "ws-send: $(cat "$OUT/ws-send-local.json")"

# 3. event fan-out over every node
log "3. event fan-out: $SUBSCRIBERS subscribers over $NODES nodes"
feed="$(create_channel_json "$BASE_PORT" '{"code":"bench-feed","kind":"eventing"}')"
"$FANOUT" --base "${BASES[0]}" --subscribe-bases "$all" --token "$feed" \
    --admin-token "$ADMIN_TOKEN" --subscribers "$SUBSCRIBERS" --events "$EVENTS" \
    --label cluster >"$OUT/fanout.json" || die "event fan-out failed"

# 4. webhooks through one node, then through all
log "4. webhooks: node 1 alone, then all $NODES nodes"
hook="$(create_channel_json "$BASE_PORT" '{"code":"bench-hook","kind":"public","wait_for_completion":true,"webhook_scenario":"response_code = 200; response_content = \"ok\";"}')"
WRK_SCRIPT="$TMP/post.lua"
cat >"$WRK_SCRIPT" <<'LUA'
wrk.method = "POST"
wrk.body = '{"event":"call.finished","call_id":"bench-0001","duration":42}'
wrk.headers["Content-Type"] = "application/json"
LUA
for base in "${BASES[@]}"; do # the channel is live everywhere before measuring
    wait_http "$base/api/token/v1/$hook" "${NODE_PIDS[0]}" || die "$base does not serve the webhook channel"
done
run_wrk one-node "${BASES[0]}/api/token/v1/$hook" 1
per_node=$(( CONNECTIONS / NODES ))
wrk_pids=()
for i in $(seq 1 "$NODES"); do
    timeout "$(( $(seconds_of "$DURATION") + 30 ))" wrk -t1 -c"$per_node" -d"$DURATION" --latency \
        -s "$WRK_SCRIPT" "${BASES[$((i - 1))]}/api/token/v1/$hook" >"$OUT/all-nodes-$i.txt" 2>&1 &
    wrk_pids+=("$!")
done
for pid in "${wrk_pids[@]}"; do wait "$pid" || die "a wrk of the all-nodes run failed"; done

# 5. notification rate
log "5. notifications: pgbench, $NOTIFY_CLIENTS clients, ${NOTIFY_SECONDS}s"
channel="$(psql -X -At -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" \
    -c "SELECT 'oktell_' || substr(md5(current_schema()), 1, 20)")"
cat >"$TMP/notify.sql" <<SQL
SELECT pg_notify('$channel', '{"o":"pgbench","d":"default","k":"events","last":1}');
SQL
notes_of() { # base -> events notes applied so far
    curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" "$1/metrics" \
        | awk '/^oktell_cluster_notes_total\{kind="events"\}/ {print $2}'
}
before="$(notes_of "${BASES[1]}")"
pgbench -n -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -c "$NOTIFY_CLIENTS" -j 1 -T "$NOTIFY_SECONDS" \
    -f "$TMP/notify.sql" "$PG_DB" >"$OUT/pgbench.txt" 2>&1 || die "pgbench failed: $(tail -3 "$OUT/pgbench.txt")"
sent="$(awk '/^number of transactions actually processed/ {split($0, a, ": "); split(a[2], b, "/"); print b[1]}' "$OUT/pgbench.txt")"
# Let the node drain what is queued, then read how many it applied.
sleep 2
after="$(notes_of "${BASES[1]}")"
usage="$(psql -X -At -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -c "SELECT pg_notification_queue_usage()")"
echo "{\"sent\": ${sent:-0}, \"applied\": $(python3 -c "print(int(float('$after') - float('$before')))"), \"seconds\": $NOTIFY_SECONDS, \"queue_usage\": $usage}" >"$OUT/notify.json"

# --- report ---------------------------------------------------------------------------------
BENCHES_DIR="$ROOT/benches" python3 - "$OUT" "$ROOT/benches/RESULTS.md" "$(date -u '+%Y-%m-%d %H:%M UTC')" \
    "$(machine_line)" "$(commit_line)" "$COMMAND" "$NODES" "$per_node" <<'PY'
import json, os, sys
sys.path.insert(0, os.environ["BENCHES_DIR"])
from wrk_parse import parse
from results_md import append_section, print_problems
out, results, date, machine, commit, command, nodes, per_node = sys.argv[1:9]
nodes = int(nodes)
load = lambda name: json.load(open(os.path.join(out, name)))
prop, cross, local = load("propagation.json"), load("ws-send-cross.json"), load("ws-send-local.json")
fan, notify = load("fanout.json"), load("notify.json")
one = parse(os.path.join(out, "one-node-1.txt"))
alls = [parse(os.path.join(out, f"all-nodes-{i}.txt")) for i in range(1, nodes + 1)]
all_rps = sum(r["rps"] for r in alls)
problems = []
for name, r in [("one node", one)] + [(f"all nodes, node {i}", r) for i, r in enumerate(alls, 1)]:
    if r["socket_errors"] or r["non2xx"]:
        problems.append(f"webhooks {name}: {r['socket_detail']} non-2xx {r['non2xx']}")
for name, r in [("cross-node", cross), ("same-node", local)]:
    if r.get("refused_or_failed") or r.get("received") != r.get("messages"):
        problems.append(f"ws_send {name}: {r.get('received')} of {r.get('messages')} received, {r.get('refused_or_failed')} refused or failed")
if notify["applied"] < notify["sent"]:
    problems.append(f"notifications: node 2 applied {notify['applied']} of {notify['sent']}")
fmt = lambda v: "—" if v is None else f"{v:,.1f}"
lat = lambda r: r["latency"]
if fan["deliveries"] != fan["deliveries_expected"] or fan["duplicates"] or fan["out_of_order"]:
    problems.append(f"event fan-out: {fan['deliveries']} of {fan['deliveries_expected']}, {fan['duplicates']} duplicates, {fan['out_of_order']} out of order")
section = f"""
## Cluster: {nodes} nodes on one PostgreSQL ({date})

- machine: {machine}
- commit: {commit}
- command: `{command}`
- nodes: release build, 1 HTTP worker and 1 scenario thread each, `log_level = warn`, `access_log = false`, one fresh database; every node and the load clients on this machine (2 cores shared by {nodes} nodes, PostgreSQL and the clients: rows 3 and 4 show what the cluster costs, not what more machines add)

| row | result |
|---|---|
| config propagation, {prop['changes']} changes via node 1, polled on {prop['nodes_watched']} nodes | p50 {fmt(lat(prop)['p50_ms'])} ms, p99 {fmt(lat(prop)['p99_ms'])} ms, max {fmt(lat(prop)['max_ms'])} ms (target p99 ≤ 100 ms) |
| ws_send to a session on another node ({cross['sessions']} sessions, {cross['concurrency']} callers) | {cross['pushes_per_s']:,.0f} pushes/s, p50 {fmt(lat(cross)['p50_ms'])} ms, p99 {fmt(lat(cross)['p99_ms'])} ms |
| the same, session on the calling node (baseline) | {local['pushes_per_s']:,.0f} pushes/s, p50 {fmt(lat(local)['p50_ms'])} ms, p99 {fmt(lat(local)['p99_ms'])} ms |
| event fan-out, {fan['held_at_start']:,} subscribers over {nodes} nodes, {fan['events']} events via node 1 | fan-out p50 {fmt(fan['fanout_p50_ms'])} ms, p99 {fmt(fan['fanout_p99_ms'])} ms, complete p50 {fmt(fan['complete_p50_ms'])} ms; deliveries {fan['deliveries']:,} of {fan['deliveries_expected']:,} |
| webhooks (wait on), one wrk through node 1 | {one['rps']:,.0f} req/s, p99 {one['p99']:.2f} ms |
| the same through all {nodes} nodes ({per_node} connections each) | {all_rps:,.0f} req/s ({', '.join(f"{r['rps']:,.0f}" for r in alls)}) |
| notifications (pgbench pg_notify, events notes) | {notify['sent'] / notify['seconds']:,.0f} notes/s sent; node 2 applied {notify['applied']:,} of {notify['sent']:,}; queue usage after: {notify['queue_usage']} |
"""
append_section(results, "# Benchmark results\n", section, problems)
print(section)
print_problems(problems)
PY
