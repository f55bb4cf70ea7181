#!/usr/bin/env bash
# One-command benchmark of the workloads users run, next to Node-RED 4.1 on the same
# machine in the same run, on the release binary with default settings:
#   - forward: a webhook whose scenario calls its outgoing URL once (an upstream that
#     answers in 50 ms) and replies with what came back; 64 connections over http and
#     https (local TLS upstream), and 512 connections;
#   - JSON order: a webhook that parses a 2 KiB order (35 items, bodies varied per
#     request), sums price x qty and replies JSON;
#   - bursts (gateway only): 500 simultaneous callers of a scenario that waits 2 s on
#     its upstream (all should answer 200 in ~2-3 s; RSS before/after/a minute later,
#     next to the 2 s upstream's, a bare actix-web serving the same 500 calls; the
#     gateway's smaps are kept in the run's folder),
#     and 2,000 callers of a scenario that computes 200 ms while a probe calls another
#     channel every 50 ms (quick 503 + Retry-After for the excess; probe p99).
# Medians over ROUNDS interleaved rounds go to stdout and to benches/RESULTS.md.
#
#   bash benches/forward_run.sh
#
# Knobs (environment): DURATION (wrk -d, 10s), ROUNDS (5; 0 runs the burst rows only), WARMUP (2s), THREADS (wrk -t,
# 1), DELAY_MS (upstream delay, 50), NODERED_VERSION (4.1.8), BURSTS (1; 0 skips the
# burst rows), PORT_BASE (18090: upstream, +1 TLS upstream, +2 gateway, +3 Node-RED,
# +4 2 s upstream), GATEWAY_BIN (measure that binary instead of building). Raw output
# and logs stay in benches/out/forward-<run id>/ (git-ignored);
# Node-RED is installed once into benches/out/node-red-<version>/ from the npm registry.
set -euo pipefail

DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-5}"
WARMUP="${WARMUP:-2s}"
THREADS="${THREADS:-1}"
DELAY_MS="${DELAY_MS:-50}"
NODERED_VERSION="${NODERED_VERSION:-4.1.8}"
BURSTS="${BURSTS:-1}"
PORT_BASE="${PORT_BASE:-18090}"
UP_PORT=$PORT_BASE
UP_TLS_PORT=$(( PORT_BASE + 1 ))
GATEWAY_PORT=$(( PORT_BASE + 2 ))
NR_PORT=$(( PORT_BASE + 3 ))
UP_SLOW_PORT=$(( PORT_BASE + 4 ))
CONNECTIONS=64
# Forwarded runs wait 50 ms on the upstream after wrk's warm-up has closed its connections.
WARMUP_SETTLE=1
NOFILE="${NOFILE:-65536}"
COMMAND="${GATEWAY_BIN:+GATEWAY_BIN=$GATEWAY_BIN }${EXTRA_SETTINGS:+EXTRA_SETTINGS='$EXTRA_SETTINGS' }DURATION=$DURATION ROUNDS=$ROUNDS WARMUP=$WARMUP THREADS=$THREADS DELAY_MS=$DELAY_MS NODERED_VERSION=$NODERED_VERSION BURSTS=$BURSTS bash benches/forward_run.sh"
BENCH_TAG="forward"
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_run_dirs forward

ensure_wrk node npm openssl
# 512 wrk connections, as many at the gateway and to the upstream, 2,000 burst callers.
raise_fd_limit 4000 "connections"
for port in "$UP_PORT" "$UP_TLS_PORT" "$GATEWAY_PORT" "$NR_PORT" "$UP_SLOW_PORT"; do
    port_in_use "$port" && die "port $port is in use (set PORT_BASE)"
done

# --- build and install -------------------------------------------------------------------
given_or_built_gateway
UPSTREAM_BIN="$(bench_exe bare_actix)"
NR_DIR="$ROOT/benches/out/node-red-$NODERED_VERSION"
if (( ROUNDS > 0 )) && [[ ! -f "$NR_DIR/node_modules/node-red/red.js" ]]; then
    log "installing node-red@$NODERED_VERSION from the npm registry into $NR_DIR"
    mkdir -p "$NR_DIR"
    (cd "$NR_DIR" && timeout 600 npm install --no-audit --no-fund --omit=dev "node-red@$NODERED_VERSION" >"$OUT/npm.log" 2>&1) \
        || die "npm install node-red failed (log: $OUT/npm.log)"
fi

# --- upstreams (50 ms over http and https, 2 s for the burst) -----------------------------
# A CA (trusted by the gateway through --tls-ca-file) and a certificate for localhost.
{
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/ca.key" -out "$TMP/ca.pem" -days 2 \
        -subj /CN=oktell-bench-ca \
    && openssl req -newkey rsa:2048 -nodes -keyout "$TMP/key.pem" -out "$TMP/cert.csr" \
        -subj /CN=localhost \
    && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$TMP/san.ext" \
    && openssl x509 -req -in "$TMP/cert.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" \
        -CAcreateserial -out "$TMP/cert.pem" -days 2 -extfile "$TMP/san.ext"
} >/dev/null 2>&1 || die "openssl could not make the certificates"
start_upstream() { # port, delay, [cert key]
    "$UPSTREAM_BIN" "127.0.0.1:$1" 1 "$2" "${@:3}" >>"$OUT/upstream-$1.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    UPSTREAM_PID=$pid
    local scheme=http
    [[ $# -gt 2 ]] && scheme=https
    wait_http "$scheme://127.0.0.1:$1/ready" "$pid" 5 || die "upstream on $1 did not come up"
}
start_upstream "$UP_PORT" "$DELAY_MS"
start_upstream "$UP_TLS_PORT" "$DELAY_MS" "$TMP/cert.pem" "$TMP/key.pem"
start_upstream "$UP_SLOW_PORT" 2000
# The peer of the RSS row: bare actix-web serving the same 500 concurrent 2 s requests
# (the gateway's outgoing calls), its RSS read at the same moments as the gateway's.
UP_SLOW_PID=$UPSTREAM_PID

# --- the gateway (defaults, but quiet) ----------------------------------------------------
cat >"$TMP/gateway.toml" <<'TOML'
access_log = false
shutdown_timeout_s = 2
TOML
start_gateway_at "$GATEWAY_PORT" "$TMP/gateway.toml" "$TMP" "$OUT/gateway.log" \
    --tls-ca-file "$TMP/ca.pem"
FORWARD='let r = outgoing_request("GET", "/slow"); response_code = r.status; response_content = r.body; response_headers = #{"Content-Type": "application/json"};'
ORDER='let o = parse_json(startparam(4)); let total = 0.0; for it in o.items { total += it.price * it.qty; } response_content = to_json(#{ id: o.id, total: total, items: o.items.len() }); response_headers = #{"Content-Type": "application/json"};'
channel() { # code, outgoing_url, scenario -> token
    create_channel_json "$GATEWAY_PORT" "$(python3 -c 'import json, sys; print(json.dumps({"code": sys.argv[1], "kind": "public",
        "wait_for_completion": True, "outgoing_url": sys.argv[2], "webhook_scenario": sys.argv[3]}))' "$1" "$2" "$3")"
}
T_FWD="$(channel fwd "http://127.0.0.1:$UP_PORT/api" "$FORWARD")"
T_FWD_TLS="$(channel fwd-tls "https://localhost:$UP_TLS_PORT/api" "$FORWARD")"
T_ORDER="$(channel order "" "$ORDER")"
T_WAIT2S="$(channel wait2s "http://127.0.0.1:$UP_SLOW_PORT" "$FORWARD")"
T_COMPUTE="$(channel compute "" 'let t = timestamp(); while t.elapsed < 0.2 {} response_content = "done";')"
T_LIGHT="$(channel light "" 'response_content = "light";')"
GW="http://127.0.0.1:$GATEWAY_PORT/api/token/v1"

# --- Node-RED 4.1 with the same flows -----------------------------------------------------
mkdir -p "$TMP/nr"
cat >"$TMP/nr/settings.js" <<JS
module.exports = {
    uiPort: $NR_PORT, uiHost: "127.0.0.1", flowFile: "flows.json", httpAdminRoot: false,
    logging: { console: { level: "warn", metrics: false, audit: false } },
    editorTheme: { tours: false }, telemetry: { enabled: false },
};
JS
python3 - "$TMP/nr/flows.json" "$UP_PORT" <<'PY'
import json, sys
path, port = sys.argv[1], sys.argv[2]
order = ("const o = msg.payload; let total = 0; for (const it of o.items) total += it.price * it.qty;\n"
         "msg.payload = { id: o.id, total: total, items: o.items.length };\n"
         "msg.headers = { 'content-type': 'application/json' }; return msg;")
flows = [
    {"id": "t", "type": "tab", "label": "bench"},
    {"id": "i1", "type": "http in", "z": "t", "url": "/fwd", "method": "post", "wires": [["r1"]]},
    {"id": "r1", "type": "http request", "z": "t", "method": "GET", "ret": "txt",
     "url": f"http://127.0.0.1:{port}/api/slow", "wires": [["o1"]]},
    {"id": "o1", "type": "http response", "z": "t", "wires": []},
    {"id": "i2", "type": "http in", "z": "t", "url": "/order", "method": "post", "wires": [["f2"]]},
    {"id": "f2", "type": "function", "z": "t", "func": order, "outputs": 1, "wires": [["o2"]]},
    {"id": "o2", "type": "http response", "z": "t", "wires": []},
]
json.dump(flows, open(path, "w"))
PY
# ROUNDS=0: the burst rows only, no Node-RED.
NR_UP=1
if (( ROUNDS > 0 )); then
NR_UP=0
node "$NR_DIR/node_modules/node-red/red.js" --settings "$TMP/nr/settings.js" --userDir "$TMP/nr" \
    >>"$OUT/node-red.log" 2>&1 &
NR_PID=$!
PIDS+=("$NR_PID")
for _ in $(seq 1 300); do
    alive "$NR_PID" || die "Node-RED exited (log: $OUT/node-red.log)"
    code="$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' -d '{"id":1,"items":[]}' "http://127.0.0.1:$NR_PORT/order" || true)"
    [[ "$code" == 200 ]] && { NR_UP=1; break; }
    sleep 0.2
done
fi
(( NR_UP )) || die "Node-RED did not answer (log: $OUT/node-red.log)"
NR="http://127.0.0.1:$NR_PORT"

# --- wrk scripts ---------------------------------------------------------------------------
cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"event":"call.finished","call_id":"bench-0001"}'
wrk.headers["Content-Type"] = "application/json"
LUA
cat >"$TMP/order.lua" <<'LUA'
-- 100 different 2 KiB orders of 35 items, sent in turn.
local bodies, n = {}, 0
for b = 1, 100 do
    local items = {}
    for i = 1, 35 do
        items[i] = string.format('{"sku":"SKU-%05d","name":"Item %d of order %d","price":%d.%02d,"qty":%d}',
            b * 100 + i, i, b, (b * 7 + i * 13) % 90 + 5, (b + i) % 100, (b + i) % 9 + 1)
    end
    bodies[b] = string.format('{"id":%d,"customer":"c-%d","currency":"EUR","items":[%s]}',
        1000 + b, b % 17, table.concat(items, ","))
end
request = function()
    n = n % 100 + 1
    return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[n])
end
LUA
probes=("$GW/$T_FWD" "$GW/$T_FWD_TLS" "$GW/$T_ORDER")
(( ROUNDS > 0 )) && probes+=("$NR/fwd")
for probe in "${probes[@]}"; do
    code="$(curl -s -o "$TMP/probe.txt" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        -d '{"id":1,"items":[{"price":1.5,"qty":2}]}' "$probe")"
    [[ "$code" == 200 ]] || die "probe $probe answered $code: $(head -c 300 "$TMP/probe.txt")"
done

# --- rounds ----------------------------------------------------------------------------------
log "run $RUN_ID: $ROUNDS rounds, wrk -t$THREADS -d$DURATION, upstream delay $DELAY_MS ms"
for round in $(seq 1 "$ROUNDS"); do
    run_wrk gw-fwd-64 "$GW/$T_FWD" "$round" 64 "$TMP/post.lua"
    run_wrk nr-fwd-64 "$NR/fwd" "$round" 64 "$TMP/post.lua"
    run_wrk gw-fwd-tls-64 "$GW/$T_FWD_TLS" "$round" 64 "$TMP/post.lua"
    run_wrk gw-fwd-512 "$GW/$T_FWD" "$round" 512 "$TMP/post.lua"
    run_wrk nr-fwd-512 "$NR/fwd" "$round" 512 "$TMP/post.lua"
    run_wrk gw-order-64 "$GW/$T_ORDER" "$round" 64 "$TMP/order.lua"
    run_wrk nr-order-64 "$NR/order" "$round" 64 "$TMP/order.lua"
done

# --- bursts ------------------------------------------------------------------------------------
# A process's memory as JSON fields, from one read of its /proc/<pid>/status: RSS and its
# two parts, anonymous memory (heap, stacks) and pages of mapped files (the binary's
# code, paged in as code paths first run, shared and reclaimable), in MB, and threads;
# null for each when the process is gone or a zombie (no VmRSS line).
memory_of() { # pid
    cat "/proc/$1/status" 2>/dev/null | awk 'BEGIN {r = a = f = t = "null"}
        /^VmRSS/ {r = sprintf("%.0f", $2 / 1024)} /^RssAnon/ {a = sprintf("%.1f", $2 / 1024)}
        /^RssFile/ {f = sprintf("%.1f", $2 / 1024)} /^Threads/ {t = $2}
        END {printf "\"rss_mb\": %s, \"parts\": {\"anon_mb\": %s, \"file_mb\": %s}, \"threads\": %s", r, a, f, t}'
}
# The gateway's memory (and the peer's) at a moment of the burst, into
# $OUT/memory-<moment>.json and printed; its smaps beside it (mapping by mapping, to
# compare the moments).
memory_at() { # moment
    printf '{%s, "peer": {%s}}\n' "$(memory_of "$GATEWAY_PID")" "$(memory_of "$UP_SLOW_PID")" \
        >"$OUT/memory-$1.json"
    cp "/proc/$GATEWAY_PID/smaps" "$OUT/smaps-$1.txt" 2>/dev/null || true
    cat "$OUT/memory-$1.json"
}
if [[ "$BURSTS" != 0 ]]; then
    # A fresh gateway (same data: the channels stay) so that the baseline is its own.
    stop_pid "$GATEWAY_PID"
    start_gateway_at "$GATEWAY_PORT" "$TMP/gateway.toml" "$TMP" "$OUT/gateway.log" \
        --tls-ca-file "$TMP/ca.pem"
    curl -fsS -o /dev/null -X POST "$GW/$T_LIGHT" || die "the restarted gateway does not answer"
    # One call of the burst's own scenario first, so that the baseline is a node that has
    # served it: the code of that path (outgoing client, waits) is paged in already, and
    # the burst's growth is what 500 at once leave behind, not the first call's code.
    curl -fsS -o /dev/null --max-time 10 -X POST "$GW/$T_WAIT2S" || die "the warm-up call failed"
    log "burst: 500 callers of a scenario that waits 2 s (memory $(memory_at before))"
    timeout 120 python3 "$ROOT/benches/burst.py" --url "$GW/$T_WAIT2S" --count 500 --timeout 60 \
        >"$OUT/burst-wait.json" || die "burst client failed"
    log "burst-wait: $(cat "$OUT/burst-wait.json"); memory $(memory_at peak)"
    # A minute later: spare threads have retired (10 s idle).
    deadline=$(( SECONDS + 60 ))
    while (( SECONDS < deadline )); do sleep 5; done
    log "a minute later: memory $(memory_at after)"
    log "burst: 2,000 callers of a scenario that computes 200 ms, probe on another channel"
    timeout 180 python3 "$ROOT/benches/burst.py" --url "$GW/$T_COMPUTE" --count 2000 --timeout 90 \
        --probe "$GW/$T_LIGHT" --probe-ms 50 >"$OUT/burst-compute.json" || die "burst client failed"
    log "burst-compute: $(cat "$OUT/burst-compute.json")"
fi

# --- report ------------------------------------------------------------------------------------
status=0
python3 - "$OUT" "$ROUNDS" "$ROOT/benches/RESULTS.md" "$(date -u '+%Y-%m-%d %H:%M UTC')" \
    "$(machine_line)" "$COMMAND" "$(commit_line)" "$DELAY_MS" "$NODERED_VERSION" "$BURSTS" <<'PY' || status=$?
import json, os, sys
sys.path.insert(0, os.environ["BENCHES_DIR"])
from wrk_parse import medians
from results_md import append_section, print_problems
out, rounds, results, date, machine, command, commit, delay, nrv, bursts = sys.argv[1:11]
rounds, delay = int(rounds), int(delay)
problems, peer_problems = [], []
def med(key):
    # The peer's own errors (Node-RED timing out under 512 connections) are its result,
    # reported, not a failure of the run.
    sink = peer_problems if key.startswith("nr-") else problems
    return medians([os.path.join(out, f"{key}-{i}.txt") for i in range(1, rounds + 1)], key, sink)
rows = [("forward, 64 conns, http", "gw-fwd-64", "nr-fwd-64", 1150, 90),
        ("forward, 64 conns, https", "gw-fwd-tls-64", None, 1000, None),
        ("forward, 512 conns, http (cap 512/host)", "gw-fwd-512", "nr-fwd-512", min(5000, 512 * 1000 // delay), None),
        ("JSON order (2 KiB, 35 items), 64 conns", "gw-order-64", "nr-order-64", 30000, None)]
lines = [] if rounds == 0 else ["| workload | gateway req/s | p50 ms | p99 ms | Node-RED req/s | p50 ms | p99 ms | gateway / Node-RED | target | |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
for name, gw, nr, target, p99_target in (rows if rounds else []):
    g = med(gw)
    n = med(nr) if nr else None
    ok = g["rps"] >= target and (p99_target is None or g["p99"] <= p99_target)
    tgt = f">= {target:,} req/s" + (f", p99 <= {p99_target} ms" if p99_target else "")
    nr_cols = (f'{n["rps"]:,.0f} | {n["p50"]:.1f} | {n["p99"]:.1f} | {g["rps"] / n["rps"]:.2f}x' if n else "— | — | — | —")
    lines.append(f'| {name} | {g["rps"]:,.0f} | {g["p50"]:.1f} | {g["p99"]:.1f} | {nr_cols} | {tgt} | {"ok" if ok else "BELOW TARGET"} |')
lines.append("")
if rounds: lines.append("Per round (req/s): " + "; ".join(
    f"{k} " + ", ".join(f"{x:,.0f}" for x in med(k)["runs"])
    for k in ["gw-fwd-64", "nr-fwd-64", "gw-fwd-tls-64", "gw-fwd-512", "nr-fwd-512", "gw-order-64", "nr-order-64"]))
# medians() appended each problem once per call: keep unique ones.
problems = sorted(set(problems))
peer_problems = sorted(set(peer_problems))
if peer_problems:
    lines += ["", "Node-RED's errors (its result, not a failure of the run): " + "; ".join(peer_problems)]
if bursts != "0":
    w = json.load(open(os.path.join(out, "burst-wait.json")))
    c = json.load(open(os.path.join(out, "burst-compute.json")))
    m = {k: json.load(open(os.path.join(out, f"memory-{k}.json"))) for k in ("before", "peak", "after")}
    lines += ["",
        "| burst | result | target |", "|---|---|---|",
        f'| 500 callers, scenario waits 2 s | statuses {w["statuses"]}, wall {w["wall_s"]} s, slowest 200 {w["ok_max_ms"]} ms | all 200 within ~2-3 s |',
        f'| RSS of the gateway | before {m["before"]["rss_mb"]} MB, peak {m["peak"]["rss_mb"]} MB ({m["peak"]["threads"]} threads), a minute later {m["after"]["rss_mb"]} MB ({m["after"]["threads"]} threads) | back to baseline ±20% |',
        f'| the same, anonymous / file pages | ' + ", ".join(f'{label} {m[k]["parts"]["anon_mb"]} / {m[k]["parts"]["file_mb"]} MB' for k, label in (("before", "before"), ("peak", "peak"), ("after", "a minute later"))) + ' | (where the difference is) |',
        f'| peer: bare actix-web (1 worker where the gateway has 2, glibc malloc) serving the same 500 concurrent 2 s calls | before {m["before"]["peer"]["rss_mb"]} MB, peak {m["peak"]["peer"]["rss_mb"]} MB, a minute later {m["after"]["peer"]["rss_mb"]} MB | (what bare actix-web keeps after the same burst) |',
        f'| 2,000 callers, scenario computes 200 ms | statuses {c["statuses"]}, 503 with Retry-After {c["refused_with_retry_after"]}, 503 after p50 {c["refused_p50_ms"]} / p99 {c["refused_p99_ms"]} / max {c["refused_max_ms"]} ms | quick 503 + Retry-After for the excess |',
        f'| another channel meanwhile (probe every 50 ms) | {c["probe_n"]} calls, p50 {c["probe_p50_ms"]} ms, p99 {c["probe_p99_ms"]} ms | p99 <= 500 ms |']
table = "\n".join(lines)
print(); print(table); print()
print_problems(problems)
section = f"""
## {date} — forward / JSON order / bursts (benches/forward_run.sh)

- machine: {machine}
- commit: {commit}
- command: `{command}`
- gateway: release build, default settings (2 HTTP workers, 2 scenario threads on 2 cores), SQLite, `access_log = false`, `log_level = warn`; Node-RED {nrv} from the npm registry on the machine's Node.js, same flows (http in → http request → http response; http in → function → http response)
- upstream: bare actix-web answering every request after {delay} ms (http, and https with a self-signed certificate the gateway trusts through `--tls-ca-file`); wrk -t1, {rounds} interleaved rounds, medians

{table}
"""
sys.exit(append_section(results, "# Benchmark results\n", section, problems))
PY
report_done "$status" "raw output and logs"
