#!/usr/bin/env bash
# One-command webhook delivery benchmark: a local receiver (webhook_sink.rs, 1 worker,
# loopback, verifies every signature) with SUBSCRIPTIONS webhook subscriptions
# (`POST /api/token/v1/{token}/subscribe`, each to its own path and secret) on one
# eventing channel; events are published through `POST /admin/v1/events` in batches of
# BATCH for DURATION_S seconds, each carrying {"i": n, "sent_ms": <unix ms just before
# its POST>}: open loop at RATE events/s (batch n leaves at start + n*BATCH/RATE), or,
# with RATE=0, back to back as fast as the API acknowledges them (one request in flight).
# Then it waits until the receiver got every delivery. Runs against the gateway on
# SQLite and on PostgreSQL, one at a time. Reports publish throughput (events
# acknowledged/s), delivery throughput (deliveries / (last arrival - first publish)),
# end-to-end latency (sent_ms -> arrival) p50/p99 overall and per subscription (min-max
# over subscriptions: fairness), and duplicates (deliveries - distinct webhook-ids), on
# stdout and in benches/RESULTS.md.
#
#   RATE=5000 bash benches/webhooks_run.sh                    # deliveries, 1 subscription
#   RATE=2500 bash benches/webhooks_run.sh                    # latency at half that rate
#   RATE=50 SUBSCRIPTIONS=100 bash benches/webhooks_run.sh    # 5,000 deliveries/s over 100
#   RATE=0 bash benches/webhooks_run.sh                       # publish throughput
#   RATE=0 SUBSCRIPTIONS=100 TIMEOUT_S=0 bash benches/webhooks_run.sh  # publish, 100 subs
#
# Knobs (environment): RATE (events/s, 0 = as fast as acknowledged; 5000), DURATION_S
# (30), BATCH (100 events per publish request, 1-1000), SUBSCRIPTIONS (1), POLL_MS
# (gateway `delivery_poll_ms`, 1000: the default, so deliveries must come from a
# publish waking the worker), CONCURRENCY (gateway `delivery_concurrency`; its default
# when unset), WORKERS (gateway HTTP workers, 1), SCENARIO_THREADS (1), BACKENDS
# ("sqlite postgres"), TIMEOUT_S (bound from the last publish to the last delivery,
# 120; 0: do not wait for deliveries, publish throughput only), SETTLE_S (wait after the last expected delivery for late duplicates, 2), PG_HOST
# (127.0.0.1), PG_PORT (5432), PG_USER (postgres, trust auth), PG_ADMIN_DB (test, the
# database psql connects to for CREATE/DROP DATABASE), SINK_PORT (18111), SQLITE_PORT
# (18112), POSTGRES_PORT (18113), GATEWAY_BIN (a gateway binary to run instead of
# building this tree's, e.g. a copy of another commit's release build for a before/after
# comparison in one session; the report names it).
# Raw JSON results, receiver and gateway logs, and the gateway's delivery metrics stay in
# benches/out/webhooks-<run id>/ (git-ignored).
set -euo pipefail

RATE="${RATE:-5000}"
DURATION_S="${DURATION_S:-30}"
BATCH="${BATCH:-100}"
SUBSCRIPTIONS="${SUBSCRIPTIONS:-1}"
CONCURRENCY="${CONCURRENCY:-}"
POLL_MS="${POLL_MS:-1000}"
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
GATEWAY_BIN="${GATEWAY_BIN:-}"
SQLITE_PORT="${SQLITE_PORT:-18112}"
POSTGRES_PORT="${POSTGRES_PORT:-18113}"
COMMAND="${GATEWAY_BIN:+GATEWAY_BIN=$GATEWAY_BIN }${EXTRA_SETTINGS:+EXTRA_SETTINGS='$EXTRA_SETTINGS' }RATE=$RATE DURATION_S=$DURATION_S BATCH=$BATCH SUBSCRIPTIONS=$SUBSCRIPTIONS TIMEOUT_S=$TIMEOUT_S${CONCURRENCY:+ CONCURRENCY=$CONCURRENCY} POLL_MS=$POLL_MS WORKERS=$WORKERS SCENARIO_THREADS=$SCENARIO_THREADS BACKENDS=\"$BACKENDS\" bash benches/webhooks_run.sh"
PG_DB="oktell_bench_$$"
BENCH_TAG="webhooks-bench"
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_run_dirs webhooks

# --- checks ---------------------------------------------------------------------------

for tool in curl python3 cargo; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
(( BATCH >= 1 && BATCH <= 1000 )) || die "BATCH must be 1-1000 (the gateway's batch limit)"
(( SUBSCRIPTIONS >= 1 )) || die "SUBSCRIPTIONS must be at least 1"
(( DURATION_S >= 1 )) || die "DURATION_S must be at least 1"
check_backends

# --- build --------------------------------------------------------------------------------
given_or_built_gateway   # GATEWAY_BIN runs a given build (an A/B of two builds)
log "building the receiver (cargo bench --no-run --bench webhook_sink)"
SINK_BIN="$(bench_exe webhook_sink)"

# --- the driver: channel, subscription, probe, publishing, waiting ---------------------------
cat >"$TMP/drive.py" <<'PY'
"""Drives one backend run; prints one JSON object on stdout, progress on stderr."""
import http.client, json, sys, time, urllib.error, urllib.request

(label, gw_port, sink_port, admin_token, rate, duration_s, batch, subs, timeout_s, settle_s) = sys.argv[1:11]
gw_port, sink_port, batch, subs = int(gw_port), int(sink_port), int(batch), int(subs)
rate, duration_s, timeout_s, settle_s = float(rate), float(duration_s), float(timeout_s), float(settle_s)
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

def sink_count():
    return call("GET", f"{SINK}/count")

def now_ms():
    return int(time.time() * 1000)

result = {"label": label, "rate": rate, "duration_s": duration_s, "batch": batch, "subscriptions": subs}

# Channel and subscriptions, each to its own path of the receiver with its own secret.
channel = call("POST", f"{GW}/admin/v1/channels", {"code": "bench-hooks", "kind": "eventing"}, ADMIN, expect=(201,))
token = channel["token"]
for k in range(subs):
    sub = call("POST", f"{GW}/api/token/v1/{token}/subscribe",
               {"url": f"{SINK}/hook/s{k}", "description": f"webhooks bench {k}"},
               {"Content-Type": "application/json"}, expect=(201,))
    for field in ("id", "secret"):
        if not sub.get(field):
            raise SystemExit(f"subscribe answer without {field}: {sub}")
    call("PUT", f"{SINK}/secret/s{k}", sub["secret"].encode(), expect=(204,))

# Probe: one event end to end to every subscription (signatures checked), then the
# receiver forgets it.
call("POST", f"{GW}/admin/v1/events", {"type": "bench.probe", "data": {"i": -1, "sent_ms": now_ms()}}, ADMIN, expect=(201,))
deadline = time.monotonic() + 20
while True:
    s = sink_count()
    if s["received"] >= subs:
        break
    if time.monotonic() > deadline:
        raise SystemExit(f"the probe event was not delivered to {subs} subscriptions within 20 s: {s}")
    time.sleep(0.05)
time.sleep(0.3)
s = sink_stats()
if s["received"] != subs or s["signature_checked"] != subs or s["bad_signature"] or s["missing_headers"] or s["bad_body"]:
    raise SystemExit(f"probe delivery is not right: {s}")
result["probe_latency_ms"] = s["p50_ms"]
call("DELETE", f"{SINK}/stats", expect=(204,))
mode = f"open loop at {rate:.0f} events/s" if rate > 0 else "as fast as acknowledged"
say(f"probe delivered and verified in {s['p50_ms']} ms; publishing for {duration_s:.0f} s, {mode}, batches of {batch}, {subs} subscription(s)")

# Publish (keep-alive, one request in flight). Open loop: batch n leaves at
# start + n * batch / rate (at once when behind that schedule); rate 0: back to back.
conn = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=60)
acked, publish_errors, ack_ms, ids = 0, {}, [], []
first_publish_ms = None
started = time.monotonic()
n, behind = 0, 0
total = int(rate * duration_s) if rate > 0 else None
while (n < total) if total is not None else (time.monotonic() - started < duration_s):
    size = batch if total is None else min(batch, total - n)
    if rate > 0:
        due = started + n / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        elif wait < -0.1:
            behind += 1
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
events = n
expected = acked * subs
ack_sorted = sorted(ack_ms)
result.update({
    "events": events, "acked": acked, "expected_deliveries": expected,
    "publish_errors": publish_errors, "first_publish_ms": first_publish_ms,
    "last_ack_ms": last_ack_ms, "publish_s": round(publish_s, 4),
    "publish_events_per_s": round(acked / publish_s, 1) if publish_s > 0 else None,
    "publish_requests": len(ack_ms), "publish_behind_schedule": behind,
    "publish_ack_p50_ms": round(ack_sorted[len(ack_sorted) // 2], 2) if ack_ms else None,
    "publish_ack_p99_ms": round(ack_sorted[min(len(ack_sorted) - 1, int(len(ack_sorted) * 0.99))], 2) if ack_ms else None,
    "publish_ack_max_ms": round(max(ack_ms), 2) if ack_ms else None,
    "distinct_event_ids_acked": len(set(ids)),
})
say(f"published {acked} events in {publish_s:.2f} s ({result['publish_events_per_s']} events/s); waiting for {expected} deliveries")

# Wait for every delivery at the receiver (bounded from the end of publishing); with
# TIMEOUT_S=0 not at all (publish throughput only).
deadline_ms = last_ack_ms + timeout_s * 1000
timed_out = False
result["drained"] = timeout_s > 0
next_say = time.monotonic() + 5
while timeout_s > 0:
    s = sink_count()
    if s["distinct_ids"] >= expected and s["received"] >= expected:
        break
    if now_ms() > deadline_ms:
        timed_out = True
        say(f"TIMED OUT {timeout_s:.0f} s after the last publish: {s['distinct_ids']} of {expected} delivered")
        break
    if time.monotonic() >= next_say:
        say(f"{s['distinct_ids']} of {expected} delivered")
        next_say = time.monotonic() + 5
    time.sleep(0.25)
complete = sink_count()
if timeout_s <= 0:
    say(f"not waiting for deliveries (TIMEOUT_S=0): {complete['distinct_ids']} of {expected} delivered so far")
elif not timed_out:
    say(f"all {expected} delivered; {settle_s:.0f} s for late duplicates")
    time.sleep(settle_s)
final = sink_stats()
per_hook = final.pop("per_hook", {})
hook_p99 = sorted(h["p99_ms"] for h in per_hook.values() if h["p99_ms"] is not None)
hook_p50 = sorted(h["p50_ms"] for h in per_hook.values() if h["p50_ms"] is not None)
hook_n = sorted(h["received"] for h in per_hook.values())
result["per_subscription"] = {
    "count": len(per_hook),
    "received_min": hook_n[0] if hook_n else None, "received_max": hook_n[-1] if hook_n else None,
    "p50_ms_min": hook_p50[0] if hook_p50 else None, "p50_ms_max": hook_p50[-1] if hook_p50 else None,
    "p99_ms_min": hook_p99[0] if hook_p99 else None, "p99_ms_max": hook_p99[-1] if hook_p99 else None,
}
result["sink"] = final
result["sink_at_complete"] = complete
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
open(sys.argv[11], "w").write("\n".join(l for l in metrics.splitlines() if "deliver" in l or "outbox" in l or "pool" in l) + "\n")

last = complete["last_at_ms"]
if last is not None and first_publish_ms is not None:
    span_s = (last - first_publish_ms) / 1000
    result["delivery_span_s"] = round(span_s, 4)
    result["deliveries_per_s"] = round(complete["distinct_ids"] / span_s, 1) if span_s > 0 else None
    # Delivered while publishing went on (open loop: should match the offered rate).
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
${CONCURRENCY:+delivery_concurrency = $CONCURRENCY}
TOML
GATEWAY_SETTINGS="$(settings_line "$GATEWAY_CONFIG")"

SINK_PID=""
start_sink() { # backend
    start_sink_at "$SINK_PORT" "$OUT/sink-$1.log"
}

run_backend() { # backend, port, database url
    local backend="$1" port="$2" url="$3" file="$OUT/$1.json"
    start_sink "$backend"
    start_backend_gateway "$backend" "$port" "$url" --allow-private-targets
    log "$backend: RATE $RATE for $DURATION_S s in batches of $BATCH, $SUBSCRIPTIONS subscription(s), delivery_poll_ms $POLL_MS"
    python3 "$TMP/drive.py" "$backend" "$port" "$SINK_PORT" "$ADMIN_TOKEN" "$RATE" "$DURATION_S" \
        "$BATCH" "$SUBSCRIPTIONS" "$TIMEOUT_S" "$SETTLE_S" "$OUT/metrics-$backend.txt" >"$file" \
        || die "the run against $backend failed (see above; logs in $OUT)"
    python3 - "$file" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1])); s = r["sink"]; g = r["gateway"]
print(f'[webhooks-bench] {r["label"]}: published {r["acked"]}/{r["events"]} at {r["publish_events_per_s"]} events/s to {r["subscriptions"]} subscription(s); '
      f'received {s["received"]} ({s["distinct_ids"]} distinct webhook-ids) at {r.get("deliveries_per_s")} deliveries/s; '
      f'e2e p50 {s["p50_ms"]} ms, p99 {s["p99_ms"]} ms; gateway delivered {g["delivered"]:.0f}, retried {g["retried"]:.0f}, '
      f'failed {g["failed"]:.0f}' + (" TIMED OUT" if r["timed_out"] else ""))
PY
    stop_pid "$GATEWAY_PID"
    stop_pid "$SINK_PID"
}

# --- runs ------------------------------------------------------------------------------------
log "run webhooks-$RUN_ID: backends $BACKENDS; RATE $RATE for $DURATION_S s, batches of $BATCH, $SUBSCRIPTIONS subscription(s)"
run_backends

# --- report ----------------------------------------------------------------------------------
MACHINE="$(machine_line)"
COMMIT="$(commit_line)"
PG_VERSION=""
if [[ " $BACKENDS " == *" postgres "* ]]; then
    PG_VERSION="$(psql -X -At -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_ADMIN_DB" -c 'SHOW server_version' 2>/dev/null | head -1 | awk '{print $1}')"
fi
status=0
python3 - "$OUT" "$ROOT/benches/RESULTS.md" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$MACHINE" \
    "$COMMAND" "$COMMIT" "$RATE" "$DURATION_S" "$BATCH" "$SUBSCRIPTIONS" "$POLL_MS" "$WORKERS" \
    "$SCENARIO_THREADS" "$GATEWAY_SETTINGS" "$BACKENDS" "$PG_VERSION" "$PG_HOST:$PG_PORT" \
    "$TIMEOUT_S" "$SETTLE_S" <<'PY' || status=$?
import json, os, sys
sys.path.insert(0, os.environ["BENCHES_DIR"])
from results_md import append_section, print_problems
(out, results, date, machine, command, commit, rate, duration_s, batch, subs, poll_ms, workers,
 scenario_threads, gateway_settings, backends, pg_version, pg_addr, timeout_s, settle_s) = sys.argv[1:20]
rate, subs = float(rate), int(subs)
names = {"sqlite": "SQLite (file in a temp dir)",
         "postgres": f"PostgreSQL {pg_version} ({pg_addr}, fresh database)".replace("  ", " ")}
problems, rows, details = [], [], []
fmt = lambda v, d=1: "n/a" if v is None else f"{v:,.{d}f}"
for key in backends.split():
    r = json.load(open(os.path.join(out, f"{key}.json")))
    s, g, ps = r["sink"], r["gateway"], r["per_subscription"]
    expected = r["expected_deliveries"]
    dups = s["received"] - s["distinct_ids"]
    if not r["drained"]:
        # Publish only: deliveries were not waited for.
        if r["publish_errors"]:
            problems.append(f"{key}: publish errors {r['publish_errors']}")
        if r["acked"] != r["events"] or r["distinct_event_ids_acked"] != r["acked"]:
            problems.append(f"{key}: {r['acked']} of {r['events']} events acknowledged, "
                            f"{r['distinct_event_ids_acked']} distinct ids")
        if dups or s["bad_signature"]:
            problems.append(f"{key}: {dups} duplicates, {s['bad_signature']} bad signatures")
        offered = f"{rate * subs:,.0f}" if rate > 0 else "as acked"
        rows.append(f'| {names[key]} | {subs} | {offered} | {r["acked"]:,} | {fmt(r["publish_events_per_s"], 0)} | '
                    f'not waited for ({s["distinct_ids"]:,} of {expected:,} arrived) | | | | {dups} |')
        details.append(f'  - {key}: {r["publish_requests"]} publish requests in {r["publish_s"]} s (ack p50 '
                       f'{fmt(r["publish_ack_p50_ms"])} ms, p99 {fmt(r["publish_ack_p99_ms"])} ms, max '
                       f'{fmt(r["publish_ack_max_ms"])} ms); deliveries not waited for (TIMEOUT_S=0)')
        continue
    if r["timed_out"]:
        problems.append(f"{key}: not every delivery arrived within {timeout_s} s of the last publish "
                        f"({s['distinct_ids']} of {expected})")
    if r["publish_errors"]:
        problems.append(f"{key}: publish errors {r['publish_errors']}")
    if r["acked"] != r["events"]:
        problems.append(f"{key}: {r['acked']} of {r['events']} events acknowledged")
    if r["distinct_event_ids_acked"] != r["acked"]:
        problems.append(f"{key}: {r['acked']} events acknowledged with {r['distinct_event_ids_acked']} distinct ids")
    if s["distinct_ids"] != expected:
        problems.append(f"{key}: {s['distinct_ids']} distinct webhook-ids received for {expected} deliveries")
    if s["distinct_event_ids"] != r["acked"] or s["distinct_seqs"] != r["acked"]:
        problems.append(f"{key}: {s['distinct_event_ids']} distinct event ids / {s['distinct_seqs']} distinct data.i "
                        f"received for {r['acked']} events")
    if ps["count"] != subs or ps["received_min"] != r["acked"] or ps["received_max"] != r["acked"]:
        problems.append(f"{key}: per subscription {ps}, expected {subs} subscriptions with {r['acked']} each")
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
    # The probe event is one more delivery per subscription on the gateway's side.
    if g["delivered"] != expected + subs:
        problems.append(f"{key}: the gateway counted {g['delivered']:.0f} delivered for {expected} + {subs} probe deliveries")
    offered = f"{rate * subs:,.0f}" if rate > 0 else "as acked"
    rows.append(f'| {names[key]} | {subs} | {offered} | {r["acked"]:,} | {fmt(r["publish_events_per_s"], 0)} | '
                f'{fmt(r.get("deliveries_per_s"), 0)} | {fmt(s["p50_ms"])} | {fmt(s["p99_ms"])} | '
                f'{fmt(ps["p99_ms_min"])}-{fmt(ps["p99_ms_max"])} | {dups} |')
    details.append(
        f'  - {key}: {r["publish_requests"]} publish requests in {r["publish_s"]} s (ack p50 {fmt(r["publish_ack_p50_ms"])} ms, '
        f'p99 {fmt(r["publish_ack_p99_ms"])} ms, max {fmt(r["publish_ack_max_ms"])} ms; {r["publish_behind_schedule"]} batches left over 100 ms late); '
        f'first delivery {fmt(r.get("first_delivery_after_publish_ms"))} ms after '
        f'the first publish, last {fmt(r.get("tail_after_last_ack_s"), 2)} s after the last ack '
        f'(delivery span {fmt(r.get("delivery_span_s"), 2)} s); per subscription p50 {fmt(ps["p50_ms_min"])}-{fmt(ps["p50_ms_max"])} ms; '
        f'e2e p90 {fmt(s["p90_ms"])} ms, max {fmt(s["max_ms"])} ms; received {s["received"]:,}, distinct webhook-ids '
        f'{s["distinct_ids"]:,}, signatures verified {s["signature_checked"] - s["bad_signature"]:,}, '
        f'out of id order {s["out_of_order"]:,}; gateway counters: delivered {g["delivered"]:,.0f} (incl. the probe), '
        f'retried {g["retried"]:,.0f}, failed {g["failed"]:,.0f}, attempts {g["attempts"]:,.0f}, '
        f'mean attempt {fmt(1000 * g["attempt_seconds"] / g["attempts"] if g["attempts"] else None, 2)} ms')
table = "\n".join([
    "| backend | subscriptions | offered deliveries/s | events | publish events/s | deliveries/s | e2e p50 ms | p99 ms | p99 per subscription (min-max) | duplicates |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    *rows,
])
print()
print(table)
print()
print_problems(problems)
details_text = "\n".join(details)
load = (f"open loop at {rate:,.0f} events/s for {duration_s} s (batch n leaves at start + n x {batch} / rate)" if rate > 0
        else f"back to back for {duration_s} s, as fast as they are acknowledged")
section = f"""
## Webhooks: {subs} subscription(s), {load} ({date})

- machine: {machine}
- commit: {commit}
- command: `{command}`
- gateway: release build, {workers} HTTP worker(s), {scenario_threads} scenario thread(s), `log_level = warn`, `--allow-private-targets`, {gateway_settings}; one eventing channel (`{{"code":"bench-hooks","kind":"eventing"}}`) with {subs} webhook subscription(s) to the receiver (each its own path and secret)
- receiver: `webhook_sink` (actix-web, 1 worker, 127.0.0.1, same machine) answers 204 at once to every POST, counts deliveries and distinct `webhook-id`s, verifies every `webhook-signature` with its subscription's secret
- load: one probe event delivered to every subscription and verified first (not counted); then events published with `POST /admin/v1/events` in batches of {batch} (`{{"events":[{{"type":"bench.tick","data":{{"i":n,"sent_ms":...}}}}, ...]}}`), one request in flight (Python `http.client`, keep-alive), {load}, while the gateway delivers; then wait (at most {timeout_s} s from the last publish) until every delivery arrived, and {settle_s} s more for late duplicates. Publish events/s: events acknowledged / publishing time; deliveries/s: deliveries / (last arrival - first publish); e2e latency: arrival at the receiver - the event's `sent_ms` (taken just before its batch's POST; unix ms, one machine's clock, ms resolution), over all deliveries, and per subscription (min-max over subscriptions: fairness); duplicates: deliveries - distinct `webhook-id`s
{details_text}

{table}
"""
sys.exit(append_section(results, "# Benchmark results\n", section, problems))
PY
report_done "$status" "raw JSON results, logs and delivery metrics"
