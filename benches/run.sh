#!/usr/bin/env bash
# One-command webhook benchmark: wrk against a bare actix-web baseline and against the
# gateway's webhook hot path (a channel with wait_for_completion off, and one with it on),
# interleaved for ROUNDS rounds on loopback; medians go to stdout and to benches/RESULTS.md.
#
#   bash benches/run.sh
#
# Knobs (environment): DURATION (wrk -d, default 10s), ROUNDS (3), WORKERS (HTTP workers
# of both servers, 1), SCENARIO_THREADS (gateway, = WORKERS), CONNECTIONS (wrk -c, 64), THREADS (wrk -t, 1), WARMUP (unmeasured
# wrk run before each measured one, 1s; 0 to skip), BARE_PORT (18081), GATEWAY_PORT (18082).
# Raw wrk output and server logs stay in benches/out/<run id>/ (git-ignored).
set -euo pipefail

DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-3}"
WORKERS="${WORKERS:-1}"
# Scenario threads of the gateway: as many as the HTTP workers, so that the gateway gets
# the same threads as the baseline plus its scenario pool at the same size.
SCENARIO_THREADS="${SCENARIO_THREADS:-$WORKERS}"
export SCENARIO_THREADS
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
WARMUP="${WARMUP:-1s}"
BARE_PORT="${BARE_PORT:-18081}"
GATEWAY_PORT="${GATEWAY_PORT:-18082}"
ADMIN_TOKEN="bench-admin-token-0123456789"
STARTUP_TIMEOUT_S=30

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND="DURATION=$DURATION ROUNDS=$ROUNDS WORKERS=$WORKERS SCENARIO_THREADS=$SCENARIO_THREADS CONNECTIONS=$CONNECTIONS THREADS=$THREADS WARMUP=$WARMUP bash benches/run.sh"
RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$ROOT/benches/out/$RUN_ID"
mkdir -p "$OUT"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/oktell-bench.XXXXXX")"


BENCH_TAG="bench"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

# --- helpers --------------------------------------------------------------------------

seconds_of() { # 10s / 2m / 10 -> seconds (for the wrk watchdog)
    local d="$1"
    case "$d" in
        *ms) echo 1 ;;
        *s) echo "${d%s}" ;;
        *m) echo $(( ${d%m} * 60 )) ;;
        *h) echo $(( ${d%h} * 3600 )) ;;
        *) echo "$d" ;;
    esac
}

wait_http() { # url, pid: poll until the URL answers 2xx, the process dies, or the deadline
    local url="$1" pid="$2" deadline=$(( SECONDS + STARTUP_TIMEOUT_S ))
    while (( SECONDS < deadline )); do
        alive "$pid" || return 1
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

WRK_SCRIPT="$TMP/post.lua"
cat >"$WRK_SCRIPT" <<'LUA'
wrk.method = "POST"
wrk.body = '{"event":"call.finished","call_id":"bench-0001","duration":42}'
wrk.headers["Content-Type"] = "application/json"
LUA

run_wrk() { # label, url, round -> writes $OUT/<label>-<round>.txt
    local label="$1" url="$2" round="$3" file="$OUT/$1-$3.txt" limit
    limit=$(( $(seconds_of "$DURATION") + 30 ))
    if [[ "$WARMUP" != "0" && "$WARMUP" != "0s" ]]; then
        timeout "$(( $(seconds_of "$WARMUP") + 30 ))" \
            wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$WRK_SCRIPT" "$url" \
            >"$OUT/$label-$round.warmup.txt" 2>&1 || die "wrk warm-up against $label failed"
    fi
    timeout "$limit" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WRK_SCRIPT" "$url" \
        >"$file" 2>&1 || die "wrk against $label failed: $(tail -3 "$file")"
    local line
    line="$(python3 "$TMP/parse.py" one "$file")"
    log "round $round $label: $line"
}

cat >"$TMP/parse.py" <<'PY'
import re, sys

def ms(value):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        return float("nan")
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

def parse(path):
    text = open(path).read()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    total = re.search(r"(\d+) requests in", text)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": ms(p50.group(1)) if p50 else float("nan"),
        "p99": ms(p99.group(1)) if p99 else float("nan"),
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
        "socket_detail": sock.group(0) if sock else "",
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "requests": int(total.group(1)) if total else 0,
    }

if sys.argv[1] == "one":
    r = parse(sys.argv[2])
    print(f'{r["rps"]:.0f} req/s, p50 {r["p50"]:.3f} ms, p99 {r["p99"]:.3f} ms, '
          f'socket errors {r["socket_errors"]}, non-2xx {r["non2xx"]}')
    sys.exit(0)

# report <out dir> <rounds> <results.md> <date> <machine> <command> <wrk params> <workers> <commit>
import os, statistics
out, rounds, results, date, machine, command, wrk_params, workers, commit = sys.argv[2:11]
scenario_threads = os.environ.get("SCENARIO_THREADS", "?")
rounds = int(rounds)
labels = [("bare", "bare actix-web (baseline)"),
          ("wait-off", "gateway, wait_for_completion off"),
          ("wait-on", "gateway, wait_for_completion on")]
med, problems = {}, []
for key, _ in labels:
    runs = [parse(os.path.join(out, f"{key}-{i}.txt")) for i in range(1, rounds + 1)]
    for i, r in enumerate(runs, 1):
        if r["rps"] <= 0 or r["requests"] == 0:
            problems.append(f"{key} round {i}: no requests measured")
        if r["socket_errors"]:
            problems.append(f"{key} round {i}: {r['socket_detail']}")
        if r["non2xx"]:
            problems.append(f"{key} round {i}: {r['non2xx']} non-2xx/3xx responses of {r['requests']}")
    med[key] = {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50": statistics.median(r["p50"] for r in runs),
        "p99": statistics.median(r["p99"] for r in runs),
        "runs": [r["rps"] for r in runs],
    }

bare = med["bare"]["rps"] or float("nan")
ratios = [("wait-off / bare", med["wait-off"]["rps"] / bare, 0.75),
          ("wait-on / bare", med["wait-on"]["rps"] / bare, 0.60)]

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
if problems:
    print("PROBLEMS (run marked failed):")
    for p in problems:
        print("  - " + p)

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
if problems:
    section += "\n**Run failed** (errors seen, numbers not trustworthy):\n\n" + "\n".join("- " + p for p in problems) + "\n"

HEADER = """# Webhook benchmark results

How to run: `bash benches/run.sh` from the repository root (see `benches/README.md` for the
knobs). Each run appends a dated section below; older sections are kept for comparison.
Targets: gateway with `wait_for_completion` off >= 75% of bare actix-web req/s, with it
on >= 60%.
"""
if os.path.exists(results):
    existing = open(results).read().rstrip("\n") + "\n"
else:
    existing = HEADER
with open(results, "w") as f:
    f.write(existing + section)
sys.exit(1 if problems else 0)
PY

# --- tools ------------------------------------------------------------------------------
SUDO=""
[[ $EUID -ne 0 ]] && command -v sudo >/dev/null && SUDO="sudo"
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    if ! apt-cache show wrk >/dev/null 2>&1; then
        $SUDO apt-get update
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y wrk
fi
for tool in wrk curl python3 cargo timeout; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

# --- build --------------------------------------------------------------------------------
log "building the gateway (cargo build --release)"
cargo build --release
GATEWAY_BIN="$ROOT/target/release/oktell-gateway"
[[ -x "$GATEWAY_BIN" ]] || die "no $GATEWAY_BIN after the build"
log "building the bare actix-web baseline (cargo bench --no-run --bench bare_actix)"
BARE_BIN="$(bench_exe bare_actix)"

for port in "$BARE_PORT" "$GATEWAY_PORT"; do
    port_in_use "$port" && die "port $port is in use (set BARE_PORT / GATEWAY_PORT)"
done

# --- servers ---------------------------------------------------------------------------------
BARE_PID=""
start_bare() {
    "$BARE_BIN" "127.0.0.1:$BARE_PORT" "$WORKERS" >>"$OUT/bare-server.log" 2>&1 &
    BARE_PID=$!
    PIDS+=("$BARE_PID")
    wait_http "http://127.0.0.1:$BARE_PORT/api/token/v1/ready" "$BARE_PID" \
        || die "bare server did not come up (log: $OUT/bare-server.log)"
}

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
    "$GATEWAY_BIN" serve \
        --config "$GATEWAY_CONFIG" \
        --listen "127.0.0.1:$GATEWAY_PORT" \
        --data-dir "$TMP" \
        --database-url "$TMP/bench.db" \
        --admin-token "$ADMIN_TOKEN" \
        --workers "$WORKERS" \
        --scenario-threads "$SCENARIO_THREADS" \
        --log-level warn \
        >>"$OUT/gateway.log" 2>&1 &
    GATEWAY_PID=$!
    PIDS+=("$GATEWAY_PID")
    wait_http "http://127.0.0.1:$GATEWAY_PORT/healthz" "$GATEWAY_PID" \
        || die "gateway did not become healthy (log: $OUT/gateway.log)"
}

create_channel() { # code, wait_for_completion -> prints the token
    local code="$1" wait="$2" body response
    body="$(python3 -c 'import json, sys; print(json.dumps({"code": sys.argv[1], "kind": "public",
        "wait_for_completion": sys.argv[2] == "true",
        "webhook_scenario": "response_code = 200; response_content = \"ok\";"}))' "$code" "$wait")"
    response="$(curl -fsS --max-time 10 -X POST "http://127.0.0.1:$GATEWAY_PORT/admin/v1/channels" \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d "$body")" || die "creating channel $code failed"
    python3 -c 'import json, sys; print(json.loads(sys.argv[1])["token"])' "$response"
}

# --- rounds ----------------------------------------------------------------------------------
log "run $RUN_ID: $ROUNDS rounds x (bare, wait-off, wait-on), wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $WORKERS worker(s)"
TOKEN_OFF=""
TOKEN_ON=""
for round in $(seq 1 "$ROUNDS"); do
    start_bare
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
CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
MACHINE="nproc $(nproc), ${CPU:-unknown CPU}, $(uname -sr), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (with uncommitted changes)')"
WRK_PARAMS="wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (warm-up $WARMUP before each)"
status=0
python3 "$TMP/parse.py" report "$OUT" "$ROUNDS" "$ROOT/benches/RESULTS.md" \
    "$(date -u '+%Y-%m-%d %H:%M UTC')" "$MACHINE" "$COMMAND" "$WRK_PARAMS" "$WORKERS" "$COMMIT" || status=$?
log "raw wrk output and server logs: $OUT"
log "appended to benches/RESULTS.md"
if (( status != 0 )); then
    die "errors during the run (see PROBLEMS above)"
fi
