#!/usr/bin/env bash
# One-command webhook delivery throughput benchmark: a local receiver (webhook_sink.rs,
# 1 worker, loopback) subscribed to one eventing channel
# (`POST /api/token/v1/{token}/subscribe`), then EVENTS events published in batches of
# BATCH through `POST /admin/v1/events` as fast as the API acknowledges them (one request
# in flight), each carrying {"i": n, "sent_ms": <unix ms just before its POST>}; then it
# waits until the receiver got every one. Runs against the gateway on SQLite and on
# PostgreSQL, one at a time, on loopback. Reports publish throughput (events
# acknowledged/s), delivery throughput (events / (last delivery - first publish)),
# end-to-end latency (sent_ms -> arrival at the receiver) p50/p99 and duplicates
# (deliveries - distinct webhook-id), on stdout and in benches/RESULTS.md.
#
#   bash benches/webhooks_run.sh
#
# Knobs (environment): EVENTS (5000), BATCH (100 events per publish request, 1-1000),
# CONCURRENCY (gateway `delivery_concurrency`, 32), POLL_MS (gateway `delivery_poll_ms`,
# 100), WORKERS (gateway HTTP workers, 1), SCENARIO_THREADS (1), BACKENDS
# ("sqlite postgres"), TIMEOUT_S (bound from the first publish to the last delivery, 120),
# SETTLE_S (wait after the last expected delivery for late duplicates, 2), PG_HOST
# (127.0.0.1), PG_PORT (5432), PG_USER (postgres, trust auth), PG_ADMIN_DB (test, the
# database psql connects to for CREATE/DROP DATABASE), SINK_PORT (18111), SQLITE_PORT
# (18112), POSTGRES_PORT (18113).
# Raw JSON results, receiver and gateway logs, and the gateway's delivery metrics stay in
# benches/out/webhooks-<run id>/ (git-ignored).
set -euo pipefail

EVENTS="${EVENTS:-5000}"
BATCH="${BATCH:-100}"
CONCURRENCY="${CONCURRENCY:-32}"
POLL_MS="${POLL_MS:-100}"
WORKERS="${WORKERS:-1}"
SCENARIO_THREADS="${SCENARIO_THREADS:-1}"
BACKENDS="${BACKENDS:-sqlite postgres}"
TIMEOUT_S="${TIMEOUT_S:-120}"
SETTLE_S="${SETTLE_S:-2}"
PG_HOST="${PG_HOST:-127.0.0.1}"
PG_PORT="${PG_PORT:-5432}"
PG_USER="${PG_USER:-postgres}"
PG_ADMIN_DB="${PG_ADMIN_DB:-test}"
SINK_PORT="${SINK_PORT:-18111}"
SQLITE_PORT="${SQLITE_PORT:-18112}"
POSTGRES_PORT="${POSTGRES_PORT:-18113}"
ADMIN_TOKEN="bench-admin-token-0123456789"
STARTUP_TIMEOUT_S=30

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND="EVENTS=$EVENTS BATCH=$BATCH CONCURRENCY=$CONCURRENCY POLL_MS=$POLL_MS WORKERS=$WORKERS SCENARIO_THREADS=$SCENARIO_THREADS bash benches/webhooks_run.sh"
RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$ROOT/benches/out/webhooks-$RUN_ID"
mkdir -p "$OUT"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/oktell-webhooksbench.XXXXXX")"
PG_DB="oktell_bench_$$"



BENCH_TAG="webhooks-bench"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

# --- checks ---------------------------------------------------------------------------

for tool in curl python3 cargo; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
(( BATCH >= 1 && BATCH <= 1000 )) || die "BATCH must be 1-1000 (the gateway's batch limit)"
(( EVENTS >= 1 )) || die "EVENTS must be at least 1"
for backend in $BACKENDS; do
    case "$backend" in
        sqlite) ;;
        postgres)
            command -v psql >/dev/null || die "psql is needed for the postgres backend (or BACKENDS=sqlite)"
            psql_admin 'SELECT 1' >/dev/null \
                || die "cannot reach PostgreSQL at $PG_USER@$PG_HOST:$PG_PORT/$PG_ADMIN_DB (or BACKENDS=sqlite)"
            ;;
        *) die "unknown backend '$backend' in BACKENDS (sqlite, postgres)" ;;
    esac
done

# --- build --------------------------------------------------------------------------------
log "building the gateway (cargo build --release)"
cargo build --release
GATEWAY_BIN="$ROOT/target/release/oktell-gateway"
[[ -x "$GATEWAY_BIN" ]] || die "no $GATEWAY_BIN after the build"
log "building the receiver (cargo bench --no-run --bench webhook_sink)"
SINK_BIN="$(bench_exe webhook_sink)"

# --- the driver: channel, subscription, probe, publishing, waiting ---------------------------
cat >"$TMP/drive.py" <<'PY'
"""Drives one backend run; prints one JSON object on stdout, progress on stderr."""
import http.client, json, sys, time, urllib.error, urllib.request

(label, gw_port, sink_port, admin_token, events, batch, timeout_s, settle_s) = sys.argv[1:9]
gw_port, sink_port, events, batch = int(gw_port), int(sink_port), int(events), int(batch)
timeout_s, settle_s = float(timeout_s), float(settle_s)
GW = f"http://127.0.0.1:{gw_port}"
SINK = f"http://127.0.0.1:{sink_port}"
ADMIN = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"}

def say(msg):
    print(f"[webhooks-bench {time.strftime('%H:%M:%S', time.gmtime())}] {label}: {msg}", file=sys.stderr, flush=True)

def call(method, url, body=None, headers=None, expect=(200,), raw=False):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    if status not in expect:
        raise SystemExit(f"{method} {url} answered {status}: {text[:300]!r}")
    if raw:
        return text.decode()
    return json.loads(text) if text else None

def sink_stats():
    return call("GET", f"{SINK}/stats")

def now_ms():
    return int(time.time() * 1000)

result = {"label": label, "events": events, "batch": batch}

# Channel and subscription.
channel = call("POST", f"{GW}/admin/v1/channels", {"code": "bench-hooks", "kind": "eventing"}, ADMIN, expect=(201,))
token = channel["token"]
sub = call("POST", f"{GW}/api/token/v1/{token}/subscribe",
           {"url": f"{SINK}/hook", "description": "webhooks bench"},
           {"Content-Type": "application/json"}, expect=(201,))
for field in ("id", "secret"):
    if not sub.get(field):
        raise SystemExit(f"subscribe answer without {field}: {sub}")
call("PUT", f"{SINK}/secret", sub["secret"].encode(), expect=(204,))
result["subscription"] = sub["id"]

# Probe: one event end to end (signature checked), then the receiver forgets it.
call("POST", f"{GW}/admin/v1/events", {"type": "bench.probe", "data": {"i": -1, "sent_ms": now_ms()}}, ADMIN, expect=(201,))
deadline = time.monotonic() + 20
while True:
    s = sink_stats()
    if s["received"] >= 1:
        break
    if time.monotonic() > deadline:
        raise SystemExit(f"the probe event was not delivered within 20 s: {s}")
    time.sleep(0.05)
time.sleep(0.3)
s = sink_stats()
if s["received"] != 1 or s["signature_checked"] != 1 or s["bad_signature"] or s["missing_headers"] or s["bad_body"]:
    raise SystemExit(f"probe delivery is not right: {s}")
result["probe_latency_ms"] = s["p50_ms"]
call("DELETE", f"{SINK}/stats", expect=(204,))
say(f"probe delivered and verified in {s['p50_ms']} ms; publishing {events} events in batches of {batch}")

# Publish as fast as the API acknowledges (keep-alive, one request in flight).
conn = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=60)
acked, publish_errors, ack_ms, ids = 0, {}, [], []
first_publish_ms = None
started = time.monotonic()
n = 0
while n < events:
    size = min(batch, events - n)
    sent = now_ms()
    if first_publish_ms is None:
        first_publish_ms = sent
    body = json.dumps({"events": [{"type": "bench.tick", "data": {"i": n + k, "sent_ms": sent}} for k in range(size)]})
    t0 = time.monotonic()
    try:
        conn.request("POST", "/admin/v1/events", body=body, headers=ADMIN)
        r = conn.getresponse()
        text = r.read()
        status = r.status
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=60)
        status, text = None, repr(e).encode()
    ack_ms.append((time.monotonic() - t0) * 1000)
    if status == 201:
        got = json.loads(text)["events"]
        ids.extend(e["id"] for e in got)
        acked += len(got)
    else:
        key = f"status {status}: {text[:200].decode(errors='replace')}"
        publish_errors[key] = publish_errors.get(key, 0) + 1
    n += size
last_ack_ms = now_ms()
publish_s = time.monotonic() - started
conn.close()
result.update({
    "acked": acked, "publish_errors": publish_errors, "first_publish_ms": first_publish_ms,
    "last_ack_ms": last_ack_ms, "publish_s": round(publish_s, 4),
    "publish_events_per_s": round(acked / publish_s, 1) if publish_s > 0 else None,
    "publish_requests": len(ack_ms),
    "publish_ack_p50_ms": round(sorted(ack_ms)[len(ack_ms) // 2], 2) if ack_ms else None,
    "publish_ack_max_ms": round(max(ack_ms), 2) if ack_ms else None,
    "distinct_event_ids_acked": len(set(ids)),
})
say(f"published {acked} events in {publish_s:.2f} s ({result['publish_events_per_s']} events/s); waiting for deliveries")

# Wait for every acknowledged event at the receiver (bounded from the first publish).
deadline_ms = first_publish_ms + timeout_s * 1000
timed_out = False
next_say = time.monotonic() + 5
while True:
    s = sink_stats()
    if s["distinct_ids"] >= acked and s["received"] >= acked:
        break
    if now_ms() > deadline_ms:
        timed_out = True
        say(f"TIMED OUT after {timeout_s:.0f} s: {s['distinct_ids']} of {acked} delivered")
        break
    if time.monotonic() >= next_say:
        say(f"{s['distinct_ids']} of {acked} delivered")
        next_say = time.monotonic() + 5
    time.sleep(0.1)
complete = sink_stats()
if not timed_out:
    say(f"all {acked} delivered; {settle_s:.0f} s for late duplicates")
    time.sleep(settle_s)
final = sink_stats()
result["sink"] = final
result["sink_at_complete"] = {k: complete[k] for k in ("received", "distinct_ids", "last_at_ms")}
result["timed_out"] = timed_out

# The gateway's own delivery counters.
metrics = call("GET", f"{GW}/metrics", raw=True)
def metric(name, outcome=None):
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") and (outcome is None or f'outcome="{outcome}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total
result["gateway"] = {
    "delivered": metric("oktell_deliveries_total", "delivered"),
    "retried": metric("oktell_deliveries_total", "retried"),
    "failed": metric("oktell_deliveries_total", "failed"),
    "attempts": metric("oktell_delivery_attempts_total"),
    "attempt_seconds": metric("oktell_delivery_attempt_seconds_total"),
    "in_flight": metric("oktell_deliveries_in_flight"),
}
open(sys.argv[9], "w").write("\n".join(l for l in metrics.splitlines() if "deliver" in l or "outbox" in l or "pool" in l) + "\n")

last = complete["last_at_ms"]
if last is not None and first_publish_ms is not None:
    span_s = (last - first_publish_ms) / 1000
    result["delivery_span_s"] = round(span_s, 4)
    result["deliveries_per_s"] = round(complete["distinct_ids"] / span_s, 1) if span_s > 0 else None
    result["tail_after_last_ack_s"] = round((last - last_ack_ms) / 1000, 4)
    if final["first_at_ms"] is not None and last > final["first_at_ms"]:
        result["drain_per_s"] = round(complete["distinct_ids"] / ((last - final["first_at_ms"]) / 1000), 1)
        result["first_delivery_after_publish_ms"] = round(final["first_at_ms"] - first_publish_ms, 1)
print(json.dumps(result))
PY

# --- gateway and receiver -------------------------------------------------------------------
GATEWAY_CONFIG="$TMP/gateway.toml"
cat >"$GATEWAY_CONFIG" <<TOML
access_log = false
shutdown_timeout_s = 2
delivery_poll_ms = $POLL_MS
delivery_concurrency = $CONCURRENCY
TOML
GATEWAY_SETTINGS="$(grep -v '^#' "$GATEWAY_CONFIG" | grep -v '^$' | sed 's/^/`/; s/$/`/' | paste -sd, - | sed 's/,/, /g')"

wait_healthy() { # name, pid, url, log
    local deadline=$(( SECONDS + STARTUP_TIMEOUT_S ))
    while (( SECONDS < deadline )); do
        alive "$2" || break
        curl -fsS -o /dev/null --max-time 1 "$3" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$1 did not come up (log: $4)"
}

SINK_PID=""
start_sink() { # backend
    port_in_use "$SINK_PORT" && die "port $SINK_PORT is in use (set SINK_PORT)"
    "$SINK_BIN" --listen "127.0.0.1:$SINK_PORT" >>"$OUT/sink-$1.log" 2>&1 &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    wait_healthy "the receiver ($1)" "$SINK_PID" "http://127.0.0.1:$SINK_PORT/stats" "$OUT/sink-$1.log"
}

GATEWAY_PID=""
start_gateway() { # backend, port, database url
    local backend="$1" port="$2" url="$3" data="$TMP/$1"
    mkdir -p "$data"
    port_in_use "$port" && die "port $port is in use (set SQLITE_PORT / POSTGRES_PORT)"
    "$GATEWAY_BIN" serve \
        --config "$GATEWAY_CONFIG" \
        --listen "127.0.0.1:$port" \
        --data-dir "$data" \
        --database-url "$url" \
        --admin-token "$ADMIN_TOKEN" \
        --workers "$WORKERS" \
        --scenario-threads "$SCENARIO_THREADS" \
        --log-level warn \
        --allow-private-targets \
        >>"$OUT/gateway-$backend.log" 2>&1 &
    GATEWAY_PID=$!
    PIDS+=("$GATEWAY_PID")
    wait_healthy "the gateway ($backend)" "$GATEWAY_PID" "http://127.0.0.1:$port/healthz" "$OUT/gateway-$backend.log"
}

run_backend() { # backend, port, database url
    local backend="$1" port="$2" url="$3" file="$OUT/$1.json"
    start_sink "$backend"
    start_gateway "$backend" "$port" "$url"
    log "$backend: $EVENTS events in batches of $BATCH, delivery_concurrency $CONCURRENCY, delivery_poll_ms $POLL_MS"
    python3 "$TMP/drive.py" "$backend" "$port" "$SINK_PORT" "$ADMIN_TOKEN" "$EVENTS" "$BATCH" \
        "$TIMEOUT_S" "$SETTLE_S" "$OUT/metrics-$backend.txt" >"$file" \
        || die "the run against $backend failed (see above; logs in $OUT)"
    python3 - "$file" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1])); s = r["sink"]; g = r["gateway"]
print(f'[webhooks-bench] {r["label"]}: published {r["acked"]}/{r["events"]} at {r["publish_events_per_s"]} events/s; '
      f'received {s["received"]} ({s["distinct_ids"]} distinct webhook-ids) at {r.get("deliveries_per_s")} deliveries/s; '
      f'e2e p50 {s["p50_ms"]} ms, p99 {s["p99_ms"]} ms; gateway delivered {g["delivered"]:.0f}, retried {g["retried"]:.0f}, '
      f'failed {g["failed"]:.0f}' + (" TIMED OUT" if r["timed_out"] else ""))
PY
    stop_pid "$GATEWAY_PID"
    stop_pid "$SINK_PID"
}

# --- runs ------------------------------------------------------------------------------------
log "run webhooks-$RUN_ID: backends $BACKENDS; $EVENTS events, batches of $BATCH, delivery_concurrency $CONCURRENCY"
for backend in $BACKENDS; do
    case "$backend" in
        sqlite)
            run_backend sqlite "$SQLITE_PORT" "$TMP/sqlite/bench.db"
            ;;
        postgres)
            psql_admin "CREATE DATABASE $PG_DB" >/dev/null || die "CREATE DATABASE $PG_DB failed"
            PG_CREATED=1
            run_backend postgres "$POSTGRES_PORT" "postgres://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB"
            psql_admin "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null \
                || log "could not drop database $PG_DB"
            PG_CREATED=""
            ;;
    esac
done

# --- report ----------------------------------------------------------------------------------
CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
MACHINE="nproc $(nproc), ${CPU:-unknown CPU}, $(uname -sr), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (with uncommitted changes)')"
PG_VERSION=""
if [[ " $BACKENDS " == *" postgres "* ]]; then
    PG_VERSION="$(psql -X -At -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_ADMIN_DB" -c 'SHOW server_version' 2>/dev/null | head -1 | awk '{print $1}')"
fi
status=0
python3 - "$OUT" "$ROOT/benches/RESULTS.md" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$MACHINE" \
    "$COMMAND" "$COMMIT" "$EVENTS" "$BATCH" "$CONCURRENCY" "$POLL_MS" "$WORKERS" \
    "$SCENARIO_THREADS" "$GATEWAY_SETTINGS" "$BACKENDS" "$PG_VERSION" "$PG_HOST:$PG_PORT" \
    "$TIMEOUT_S" "$SETTLE_S" <<'PY' || status=$?
import json, os, sys
(out, results, date, machine, command, commit, events, batch, concurrency, poll_ms, workers,
 scenario_threads, gateway_settings, backends, pg_version, pg_addr, timeout_s, settle_s) = sys.argv[1:19]
events = int(events)
names = {"sqlite": "SQLite (file in a temp dir)",
         "postgres": f"PostgreSQL {pg_version} ({pg_addr}, fresh database)".replace("  ", " ")}
problems, rows, details = [], [], []
fmt = lambda v, d=1: "n/a" if v is None else f"{v:,.{d}f}"
for key in backends.split():
    r = json.load(open(os.path.join(out, f"{key}.json")))
    s, g = r["sink"], r["gateway"]
    dups = s["received"] - s["distinct_ids"]
    if r["timed_out"]:
        problems.append(f"{key}: not every event was delivered within {timeout_s} s "
                        f"({s['distinct_ids']} of {r['acked']})")
    if r["publish_errors"]:
        problems.append(f"{key}: publish errors {r['publish_errors']}")
    if r["acked"] != events:
        problems.append(f"{key}: {r['acked']} of {events} events acknowledged")
    if r["distinct_event_ids_acked"] != r["acked"]:
        problems.append(f"{key}: {r['acked']} events acknowledged with {r['distinct_event_ids_acked']} distinct ids")
    if s["distinct_ids"] != r["acked"]:
        problems.append(f"{key}: {s['distinct_ids']} distinct webhook-ids received for {r['acked']} events")
    if s["distinct_event_ids"] != r["acked"] or s["distinct_seqs"] != r["acked"]:
        problems.append(f"{key}: {s['distinct_event_ids']} distinct event ids / {s['distinct_seqs']} distinct data.i "
                        f"received for {r['acked']} events")
    if dups:
        problems.append(f"{key}: {dups} duplicate deliveries (same webhook-id)")
    for field in ["missing_headers", "bad_body", "bad_signature", "stale_timestamp"]:
        if s[field]:
            problems.append(f"{key}: {s[field]} deliveries with {field.replace('_', ' ')}")
    if s["signature_checked"] != s["received"]:
        problems.append(f"{key}: {s['signature_checked']} of {s['received']} signatures checked")
    if g["retried"] or g["failed"]:
        problems.append(f"{key}: the gateway counted {g['retried']:.0f} retried and {g['failed']:.0f} failed attempts "
                        f"(the receiver answers 204 to everything)")
    # The probe event is one more delivery on the gateway's side.
    if g["delivered"] != r["acked"] + 1:
        problems.append(f"{key}: the gateway counted {g['delivered']:.0f} delivered for {r['acked']} + 1 probe events")
    rows.append(f'| {names[key]} | {r["acked"]:,} | {fmt(r["publish_events_per_s"], 0)} | {fmt(r.get("deliveries_per_s"), 0)} | '
                f'{fmt(s["p50_ms"])} | {fmt(s["p99_ms"])} | {dups} |')
    details.append(
        f'  - {key}: {r["publish_requests"]} publish requests in {r["publish_s"]} s (ack p50 {fmt(r["publish_ack_p50_ms"])} ms, '
        f'max {fmt(r["publish_ack_max_ms"])} ms); first delivery {fmt(r.get("first_delivery_after_publish_ms"))} ms after '
        f'the first publish, last {fmt(r.get("tail_after_last_ack_s"), 2)} s after the last ack '
        f'(delivery span {fmt(r.get("delivery_span_s"), 2)} s; {fmt(r.get("drain_per_s"), 0)} deliveries/s first-to-last delivery); '
        f'e2e p90 {fmt(s["p90_ms"])} ms, max {fmt(s["max_ms"])} ms; received {s["received"]:,}, distinct webhook-ids '
        f'{s["distinct_ids"]:,}, signatures verified {s["signature_checked"] - s["bad_signature"]:,}, '
        f'out of id order {s["out_of_order"]:,}; gateway counters: delivered {g["delivered"]:,.0f} (incl. the probe), '
        f'retried {g["retried"]:,.0f}, failed {g["failed"]:,.0f}, attempts {g["attempts"]:,.0f}, '
        f'mean attempt {fmt(1000 * g["attempt_seconds"] / g["attempts"] if g["attempts"] else None, 2)} ms')
table = "\n".join([
    "| backend | events | publish events/s | deliveries/s | e2e p50 ms | p99 ms | duplicates |",
    "|---|---:|---:|---:|---:|---:|---:|",
    *rows,
])
print()
print(table)
print()
if problems:
    print("PROBLEMS (run marked failed):")
    for p in problems:
        print("  - " + p)
details_text = "\n".join(details)
section = f"""
## Webhooks: {events:,} events delivered to a local receiver ({date})

- machine: {machine}
- commit: {commit}
- command: `{command}`
- gateway: release build, {workers} HTTP worker(s), {scenario_threads} scenario thread(s), `log_level = warn`, `--allow-private-targets`, {gateway_settings}; one eventing channel (`{{"code":"bench-hooks","kind":"eventing"}}`) with one webhook subscription to the receiver
- receiver: `webhook_sink` (actix-web, 1 worker, 127.0.0.1, same machine) answers 204 at once to every POST, counts deliveries and distinct `webhook-id`s, verifies every `webhook-signature` with the subscription's secret
- load: one probe event delivered and verified first (not counted); then {events:,} events published with `POST /admin/v1/events` in batches of {batch} (`{{"events":[{{"type":"bench.tick","data":{{"i":n,"sent_ms":...}}}}, ...]}}`), one request in flight, as fast as they are acknowledged (Python `http.client`, keep-alive), while the gateway delivers; then wait (at most {timeout_s} s from the first publish) until every event arrived, and {settle_s} s more for late duplicates. Publish events/s: events acknowledged / publishing time; deliveries/s: events / (last arrival - first publish); e2e latency: arrival at the receiver - the event's `sent_ms` (taken just before its batch's POST; unix ms, one machine's clock, ms resolution), over all deliveries; duplicates: deliveries - distinct `webhook-id`s
{details_text}

{table}
"""
if problems:
    section += "\n**Run failed** (errors seen, numbers not trustworthy):\n\n" + "\n".join("- " + p for p in problems) + "\n"
existing = open(results).read().rstrip("\n") + "\n" if os.path.exists(results) else "# Benchmark results\n"
with open(results, "w") as f:
    f.write(existing + section)
sys.exit(1 if problems else 0)
PY
log "raw JSON results, logs and delivery metrics: $OUT"
log "appended to benches/RESULTS.md"
if (( status != 0 )); then
    die "errors during the run (see PROBLEMS above)"
fi
