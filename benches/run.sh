#!/usr/bin/env bash
# One-command webhook benchmark: wrk against a bare actix-web baseline and against the
# gateway's webhook hot path (a channel with wait_for_completion off, and one with it on),
# interleaved for ROUNDS rounds on loopback; medians go to stdout and to benches/RESULTS.md.
#
#   bash benches/run.sh
#
# Knobs (environment): DURATION (wrk -d, default 10s), ROUNDS (3), WORKERS (HTTP workers
# of both servers, one per core as the gateway ships; 1 was the default until 2026-11-29),
# SCENARIO_THREADS (gateway, = WORKERS), CONNECTIONS (wrk -c, 64), THREADS (wrk -t, 1), WARMUP (unmeasured
# wrk run before each measured one, 1s; 0 to skip), BARE_PORT (18081), GATEWAY_PORT (18082).
# Raw wrk output and server logs stay in benches/out/run-<run id>/ (git-ignored).
set -euo pipefail

DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-3}"
WORKERS="${WORKERS:-$(nproc)}"
# Scenario threads of the gateway: as many as the HTTP workers, so that the gateway gets
# the same threads as the baseline plus its scenario pool at the same size.
SCENARIO_THREADS="${SCENARIO_THREADS:-$WORKERS}"
export SCENARIO_THREADS
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
WARMUP="${WARMUP:-1s}"
BARE_PORT="${BARE_PORT:-18081}"
GATEWAY_PORT="${GATEWAY_PORT:-18082}"
COMMAND="${GATEWAY_BIN:+GATEWAY_BIN=$GATEWAY_BIN }${EXTRA_SETTINGS:+EXTRA_SETTINGS='$EXTRA_SETTINGS' }DURATION=$DURATION ROUNDS=$ROUNDS WORKERS=$WORKERS SCENARIO_THREADS=$SCENARIO_THREADS CONNECTIONS=$CONNECTIONS THREADS=$THREADS WARMUP=$WARMUP bash benches/run.sh"
BENCH_TAG="bench"
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_run_dirs run

WRK_SCRIPT="$TMP/post.lua"
cat >"$WRK_SCRIPT" <<'LUA'
wrk.method = "POST"
wrk.body = '{"event":"call.finished","call_id":"bench-0001","duration":42}'
wrk.headers["Content-Type"] = "application/json"
LUA

cat >"$TMP/parse.py" <<'PY'
import os, sys
sys.path.insert(0, os.environ["BENCHES_DIR"])
from wrk_parse import medians
from results_md import append_section, print_problems

# report <out dir> <rounds> <results.md> <date> <machine> <command> <wrk params> <workers> <commit>
out, rounds, results, date, machine, command, wrk_params, workers, commit = sys.argv[2:11]
scenario_threads = os.environ.get("SCENARIO_THREADS", "?")
rounds = int(rounds)
labels = [("bare", "bare actix-web (baseline)"),
          ("wait-off", "gateway, wait_for_completion off"),
          ("wait-on", "gateway, wait_for_completion on")]
med, problems = {}, []
for key, _ in labels:
    med[key] = medians([os.path.join(out, f"{key}-{i}.txt") for i in range(1, rounds + 1)], key, problems)

bare = med["bare"]["rps"] or float("nan")
ratios = [("wait-off / bare", med["wait-off"]["rps"] / bare, 0.75),
          ("wait-on / bare", med["wait-on"]["rps"] / bare, 0.70)]

rows = []
for key, name in labels:
    m = med[key]
    rows.append(f'| {name} | {m["rps"]:,.0f} | {m["p50"]:.2f} | {m["p99"]:.2f} | '
                + ", ".join(f"{x:,.0f}" for x in m["runs"]) + " |")
table = "\n".join([
    "| server | req/s (median) | p50 ms | p99 ms | req/s per round |",
    "|---|---:|---:|---:|---|",
    *rows,
    "",
    "| ratio | measured | target | |",
    "|---|---:|---:|---|",
    *[f"| {n} | {v:.0%} | >= {t:.0%} | {'ok' if v >= t else 'BELOW TARGET'} |" for n, v, t in ratios],
])
print()
print(table)
print()
print_problems(problems)

section = f"""
## {date}

- machine: {machine}
- commit: {commit}
- command: `{command}`
- servers: {workers} HTTP worker(s) each; gateway with SQLite in a temp dir, `log_level = warn`, `access_log = false`, `channel_max_in_flight = 4096`, {scenario_threads} scenario thread(s)
- wrk: {wrk_params}, POST with a 62-byte JSON body, loopback; {rounds} interleaved rounds (bare, wait-off, wait-on), medians of each column
- channel scenario: `response_code = 200; response_content = "ok";`

{table}
"""
HEADER = """# Webhook benchmark results

How to run: `bash benches/run.sh` from the repository root (see `benches/README.md` for the
knobs). Each run appends a dated section below; older sections are kept for comparison.
Targets: gateway with `wait_for_completion` off >= 75% of bare actix-web req/s, with it
on >= 70%.
"""
sys.exit(append_section(results, HEADER, section, problems))
PY

# --- tools ------------------------------------------------------------------------------
ensure_wrk

# --- build --------------------------------------------------------------------------------
given_or_built_gateway   # GATEWAY_BIN runs a given build (an A/B of two builds)
log "building the bare actix-web baseline (cargo bench --no-run --bench bare_actix)"
BARE_BIN="$(bench_exe bare_actix)"

ports_free BARE_PORT GATEWAY_PORT

# --- servers ---------------------------------------------------------------------------------
GATEWAY_CONFIG="$TMP/gateway.toml"
cat >"$GATEWAY_CONFIG" <<'TOML'
access_log = false
shutdown_timeout_s = 2
# Wait-off requests are answered before their scenario runs; under a sustained flood the
# backlog is bounded by the queue and this per-channel limit (503 beyond). As large as
# the queue, so that bursts are absorbed and only true overload is refused.
channel_max_in_flight = 4096
TOML
GATEWAY_PID=""
start_gateway() {
    start_gateway_at "$GATEWAY_PORT" "$GATEWAY_CONFIG" "$TMP" "$OUT/gateway.log" \
        --workers "$WORKERS" --scenario-threads "$SCENARIO_THREADS"
}

create_channel() { # code, wait_for_completion -> prints the token
    create_channel_json "$GATEWAY_PORT" "$(python3 -c 'import json, sys; print(json.dumps({"code": sys.argv[1], "kind": "public",
        "wait_for_completion": sys.argv[2] == "true",
        "webhook_scenario": "response_code = 200; response_content = \"ok\";"}))' "$1" "$2")"
}

# --- rounds ----------------------------------------------------------------------------------
log "run $RUN_ID: $ROUNDS rounds x (bare, wait-off, wait-on), wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $WORKERS worker(s)"
TOKEN_OFF=""
TOKEN_ON=""
for round in $(seq 1 "$ROUNDS"); do
    start_bare "http://127.0.0.1:$BARE_PORT/api/token/v1/ready"
    run_wrk bare "http://127.0.0.1:$BARE_PORT/api/token/v1/bench" "$round"
    stop_pid "$BARE_PID"

    # The gateway restarts each round on the same data dir: the channels persist, and
    # only one server is ever running while wrk measures.
    start_gateway
    if [[ -z "$TOKEN_OFF" ]]; then
        TOKEN_OFF="$(create_channel wait-off false)"
        TOKEN_ON="$(create_channel wait-on true)"
        [[ -n "$TOKEN_OFF" && -n "$TOKEN_ON" ]] || die "channel tokens missing"
        # Sanity: both channels answer 200 before measuring.
        for token in "$TOKEN_OFF" "$TOKEN_ON"; do
            code="$(curl -sS -o /dev/null -w '%{http_code}' -X POST -d '{}' \
                "http://127.0.0.1:$GATEWAY_PORT/api/token/v1/$token")"
            [[ "$code" == 200 ]] || die "webhook probe answered $code"
        done
    fi
    run_wrk wait-off "http://127.0.0.1:$GATEWAY_PORT/api/token/v1/$TOKEN_OFF" "$round"
    run_wrk wait-on "http://127.0.0.1:$GATEWAY_PORT/api/token/v1/$TOKEN_ON" "$round"
    stop_pid "$GATEWAY_PID"
done

# --- report ----------------------------------------------------------------------------------
MACHINE="$(machine_line)"
COMMIT="$(commit_line)"
WRK_PARAMS="wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (warm-up $WARMUP before each)"
status=0
python3 "$TMP/parse.py" report "$OUT" "$ROUNDS" "$ROOT/benches/RESULTS.md" \
    "$(date -u '+%Y-%m-%d %H:%M UTC')" "$MACHINE" "$COMMAND" "$WRK_PARAMS" "$WORKERS" "$COMMIT" || status=$?
report_done "$status" "raw wrk output and server logs"
