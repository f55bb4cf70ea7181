#!/usr/bin/env bash
# Execution history benchmark (#13): webhooks at a fixed offered rate (open loop,
# `webhook_rate.rs` over `shared/fixed_rate.rs`; latency counted from when each request
# was due) against a public channel (`wait_for_completion`, scenario
# `response_content = "ok";`) with `history = off` and with `history = all`, one gateway
# at a time, interleaved for ROUNDS; then `history = all` at each of SEARCH_RATES to
# find the highest rate at which history stays complete (every run recorded: drops 0,
# no errors). The gateway's own counters say what was recorded
# (oktell_executions_{queued,dropped,written}_total). Appends a section to
# benches/RESULTS.md; raw JSON and logs stay in benches/out/history-<run id>/.
#
#   bash benches/history_run.sh                       # 10,000/s, 10 s, search 5k..30k
#   RATE=5000 SEARCH_RATES="" bash benches/history_run.sh   # one rate, no search
#
# Knobs: RATE (10000), DURATION_S (10), CONNECTIONS (256), ROUNDS (1), SEARCH_RATES
# ("5000 10000 15000 20000 25000 30000"; stops at the first incomplete one), WORKERS (1),
# SCENARIO_THREADS (1), QUEUE (executions_queue; default the gateway's), FLUSH_MS
# (executions_flush_ms; default the gateway's), PORT (18121), GATEWAY_BIN (run that
# binary instead of building this tree's). Bounded: every client run ends DURATION_S
# + 5 s after it starts (requests time out), every settle wait after 30 s.
set -euo pipefail

RATE="${RATE:-10000}"
DURATION_S="${DURATION_S:-10}"
CONNECTIONS="${CONNECTIONS:-256}"
ROUNDS="${ROUNDS:-1}"
SEARCH_RATES="${SEARCH_RATES-5000 10000 15000 20000 25000 30000}"
WORKERS="${WORKERS:-1}"
SCENARIO_THREADS="${SCENARIO_THREADS:-1}"
QUEUE="${QUEUE:-}"
FLUSH_MS="${FLUSH_MS:-}"
PORT="${PORT:-18121}"
GATEWAY_BIN="${GATEWAY_BIN:-}"
ADMIN_TOKEN="bench-admin-token-0123456789"
STARTUP_TIMEOUT_S=30

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND="${GATEWAY_BIN:+GATEWAY_BIN=$GATEWAY_BIN }RATE=$RATE DURATION_S=$DURATION_S CONNECTIONS=$CONNECTIONS ROUNDS=$ROUNDS SEARCH_RATES=\"$SEARCH_RATES\" WORKERS=$WORKERS SCENARIO_THREADS=$SCENARIO_THREADS${QUEUE:+ QUEUE=$QUEUE}${FLUSH_MS:+ FLUSH_MS=$FLUSH_MS} bash benches/history_run.sh"
RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$ROOT/benches/out/history-$RUN_ID"
mkdir -p "$OUT"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/oktell-historybench.XXXXXX")"
BENCH_TAG="history-bench"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

for tool in curl python3 cargo awk; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
port_in_use "$PORT" && die "port $PORT is in use (set PORT)"

given_or_built_gateway
log "building the load client (cargo bench --no-run --bench webhook_rate)"
CLIENT="$(bench_exe webhook_rate)"

CONFIG="$TMP/gateway.toml"
cat >"$CONFIG" <<TOML
access_log = false
shutdown_timeout_s = 2
${QUEUE:+executions_queue = $QUEUE}
${FLUSH_MS:+executions_flush_ms = $FLUSH_MS}
TOML

# One measured run: a fresh gateway (SQLite in a temp dir), a channel with HISTORY, the
# client at RATE; then the executions writer is given time to store what was queued.
one_run() { # label, history, rate
    local label="$1" history="$2" rate="$3" data="$TMP/$1" token
    mkdir -p "$data"
    start_gateway_at "$PORT" "$CONFIG" "$data" "$OUT/gateway-$label.log" \
        --workers "$WORKERS" --scenario-threads "$SCENARIO_THREADS"
    token="$(create_channel_json "$PORT" "{\"code\":\"bench\",\"kind\":\"public\",\"wait_for_completion\":true,\"history\":\"$history\",\"webhook_scenario\":\"response_content = \\\"ok\\\";\"}")"
    timeout "$(( DURATION_S + 30 ))" "$CLIENT" --url "http://127.0.0.1:$PORT/api/token/v1/$token" \
        --rate "$rate" --duration-s "$DURATION_S" --connections "$CONNECTIONS" --timeout-ms 5000 \
        --label "$label" >"$OUT/$label.json" || die "the load client failed ($label)"
    wait_metrics_settle "$PORT" oktell_executions_written_total oktell_executions_dropped_total \
        oktell_executions_queued_total 30 || log "$label: the writer did not catch up within 30 s"
    python3 - "$OUT/$label.json" "$history" \
        "$(metric_sum "$PORT" oktell_executions_queued_total)" \
        "$(metric_sum "$PORT" oktell_executions_dropped_total)" \
        "$(metric_sum "$PORT" oktell_executions_written_total)" \
        "$(metric_sum "$PORT" oktell_executions_write_failed_total)" <<'PY'
import json, sys
path, history, queued, dropped, written, failed = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
r = json.load(open(path))
r.update(history=history, queued=queued, dropped=dropped, written=written, write_failed=failed)
json.dump(r, open(path, "w"))
PY
    log "$label: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("offered %(offered_rate).0f/s, ok %(ok)s/%(sent)s, p50 %(p50_ms)s ms, p99 %(p99_ms)s ms, late %(late)s, errors %(errors)s; recorded %(written)s, dropped %(dropped)s" % r)' "$OUT/$label.json")"
    stop_pid "$GATEWAY_PID"
}

log "run history-$RUN_ID: $ROUNDS round(s) of off/all at $RATE/s for $DURATION_S s; search: ${SEARCH_RATES:-none}"
for round in $(seq 1 "$ROUNDS"); do
    one_run "off-$RATE-r$round" off "$RATE"
    one_run "all-$RATE-r$round" all "$RATE"
done
for rate in $SEARCH_RATES; do
    one_run "search-$rate" all "$rate"
    if ! python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r["dropped"]==0 and not r["errors"] and r["ok"]==r["sent"] and r["written"]==r["ok"] else 1)' "$OUT/search-$rate.json"; then
        log "history incomplete at $rate/s: search stops"
        break
    fi
done

status=0
BENCHES_DIR="$ROOT/benches" python3 - "$OUT" "$ROOT/benches/RESULTS.md" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(machine_line)" \
    "$COMMAND" "$(commit_line)" "$RATE" "$ROUNDS" "$DURATION_S" "$CONNECTIONS" "$WORKERS" "$SCENARIO_THREADS" <<'PY' || status=$?
import glob, json, os, statistics, sys
sys.path.insert(0, os.environ["BENCHES_DIR"])
from results_md import append_section, print_problems
out, results, date, machine, command, commit, rate, rounds, duration, conns, workers, threads = sys.argv[1:13]
runs = {os.path.basename(p)[:-5]: json.load(open(p)) for p in glob.glob(os.path.join(out, "*.json"))}
def med(prefix, key):
    vals = [r[key] for k, r in runs.items() if k.startswith(prefix) and r.get(key) is not None]
    return statistics.median(vals) if vals else None
problems = []
off_p99, all_p99 = med(f"off-{rate}-", "p99_ms"), med(f"all-{rate}-", "p99_ms")
all_runs = [r for k, r in runs.items() if k.startswith(f"all-{rate}-")]
drops = sum(r["dropped"] for r in all_runs)
for k, r in sorted(runs.items()):
    if r["errors"] or r["ok"] != r["sent"]:
        problems.append(f"{k}: {r['ok']} of {r['sent']} answered 2xx, errors {r['errors']}, statuses {r['statuses']}")
    if r["late"] > r["sent"] // 100:
        problems.append(f"{k}: the client left {r['late']} requests late: the offered rate was not offered")
ratio = (all_p99 / off_p99) if off_p99 and all_p99 else None
complete = [int(k.split("-")[1]) for k, r in runs.items() if k.startswith("search-")
            and r["dropped"] == 0 and not r["errors"] and r["ok"] == r["sent"] and r["written"] == r["ok"]]
rows = []
for k, r in sorted(runs.items(), key=lambda kv: (kv[0].split("-")[0], float(kv[1]["offered_rate"]))):
    rows.append(f"| {k} | {r['history']} | {r['offered_rate']:,.0f} | {r['achieved_rate']:,.0f} | {r['ok']:,}/{r['sent']:,} | "
                f"{r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['written']:,} | {r['dropped']:,} |")
table = "\n".join(["| run | history | offered/s | answered/s | 2xx | p50 ms | p99 ms | max ms | recorded | dropped |",
                   "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", *rows])
verdict = (f"at {float(rate):,.0f}/s: history=all recorded every run: {'yes' if drops == 0 and all_runs else 'NO'} (drops {drops}); "
           f"p99 all/off = {ratio:.2f} (target <= 1.20: {'met' if ratio is not None and ratio <= 1.2 else 'NOT met'})"
           if ratio is not None else "no p99 to compare")
highest = f"highest rate tried with complete history: {max(complete):,}/s" if complete else "no searched rate kept history complete"
print("\n" + table + "\n\n" + verdict + "\n" + highest)
section = f"""
## Execution history at a fixed rate ({date})

- machine: {machine}
- commit: {commit}
- command: `{command}`
- gateway: release build, {workers} HTTP worker(s), {threads} scenario thread(s), SQLite in a temp dir, `access_log = false`, `log_level = warn`; one public channel, `wait_for_completion`, scenario `response_content = "ok";`, `history` as in the table; a fresh gateway per run
- load: `webhook_rate` (open loop, {conns} keep-alive connections, one thread): POST of a 45-byte JSON body for {duration} s at the offered rate; latency from when each request was due (waits for a free connection count); recorded / dropped: the gateway's `oktell_executions_written_total` / `oktell_executions_dropped_total` after the writer settled
- {verdict}
- {highest}

{table}
"""
print_problems(problems)
sys.exit(append_section(results, "# Benchmark results\n", section, problems))
PY
log "raw JSON and logs: $OUT; appended to benches/RESULTS.md"
(( status == 0 )) || die "errors during the run (see PROBLEMS above)"
