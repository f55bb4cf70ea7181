#!/usr/bin/env bash
# Instructions per webhook request, counted by callgrind (valgrind): repeatable whatever
# else the machine does, unlike req/s. For each channel setup the release gateway runs
# under callgrind twice on a fresh SQLite: once creating the channel and sending N
# webhooks over one keep-alive connection, once creating it and sending none; the
# difference over N is the cost of one request (accept, route, guards, scenario run,
# reply). Setups: a channel without guards (wait off and on), with `verify` (a valid
# GitHub-style signature), with `allow_ips` + `rate_limit`.
#
#   N=2000 bash benches/callgrind_run.sh
set -euo pipefail
N="${N:-2000}"
PORT="${PORT:-18095}"
ADMIN_TOKEN="bench-admin-token-0123456789"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND="N=$N bash benches/callgrind_run.sh"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/oktell-callgrind.XXXXXX")"
BENCH_TAG="callgrind"
STARTUP_TIMEOUT_S=180
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
command -v valgrind >/dev/null || die "valgrind is missing (apt-get install valgrind)"
# GATEWAY_BIN=path measures another build (say, an older commit's) instead of building
# this one; ONLY=regex keeps the setups whose names match (an older build may lack the
# guard fields).
if [[ -n "${GATEWAY_BIN:-}" ]]; then
    [[ -x "$GATEWAY_BIN" ]] || die "GATEWAY_BIN=$GATEWAY_BIN is not executable"
    COMMAND="GATEWAY_BIN=$GATEWAY_BIN ONLY=${ONLY:-} $COMMAND"
else
    build_gateway
fi

cat >"$TMP/gateway.toml" <<'TOML'
access_log = false
log_level = "warn"
workers = 1
scenario_threads = 1
TOML

# GitHub's documented example: secret, body, X-Hub-Signature-256.
SECRET="It's a Secret to Everybody"
BODY='Hello, World!'
SIGNATURE='sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17'

cat >"$TMP/send.py" <<'PY'
import http.client, sys
port, token, n, sig, body = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for _ in range(n):
    c.request("POST", f"/api/token/v1/{token}", body=body,
              headers={"X-Hub-Signature-256": sig, "Content-Type": "text/plain"})
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}")
PY

# Total instructions of one gateway life: start, create the channel, send COUNT, stop.
instructions() { # channel json, count
    local data="$TMP/data-$RANDOM" out="$TMP/cg-$RANDOM.out" token
    mkdir -p "$data"
    valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no \
        "$GATEWAY_BIN" serve --config "$TMP/gateway.toml" --listen "127.0.0.1:$PORT" \
        --data-dir "$data" --database-url "$data/bench.db" --admin-token "$ADMIN_TOKEN" \
        >>"$TMP/gateway.log" 2>&1 &
    GATEWAY_PID=$!
    PIDS+=("$GATEWAY_PID")
    wait_http "http://127.0.0.1:$PORT/healthz" "$GATEWAY_PID" 5 \
        || die "gateway under callgrind did not start (log: $TMP/gateway.log)"
    token="$(create_channel_json "$PORT" "$1")"
    python3 "$TMP/send.py" "$PORT" "$token" "$2" "$SIGNATURE" "$BODY" || die "requests failed"
    # Not stop_pid: under callgrind a clean stop takes longer than its 5 s, and a KILL
    # writes no profile.
    kill -TERM "$GATEWAY_PID"
    wait "$GATEWAY_PID" || true
    PIDS=()
    [[ -s "$out" ]] || die "no callgrind profile from the gateway"
    awk '/^summary:|^totals:/ {print $2; exit}' "$out"
}

SCRIPT='"webhook_scenario": "let x = 1;"'
declare -A SETUPS=(
    [1-none-wait-off]="{\"code\": \"c\", \"kind\": \"public\", $SCRIPT}"
    [2-none-wait-on]="{\"code\": \"c\", \"kind\": \"public\", \"wait_for_completion\": true, $SCRIPT}"
    [3-verify]="{\"code\": \"c\", \"kind\": \"public\", $SCRIPT, \"verify\": {\"scheme\": \"hmac-sha256-header\", \"header\": \"X-Hub-Signature-256\", \"prefix\": \"sha256=\", \"secret\": \"$SECRET\"}}"
    [4-allow-rate]="{\"code\": \"c\", \"kind\": \"public\", $SCRIPT, \"allow_ips\": [\"127.0.0.0/8\"], \"rate_limit\": {\"per_second\": 1000000}}"
)
ROWS=""
for name in $(printf '%s\n' "${!SETUPS[@]}" | sort | grep -E "${ONLY:-.}"); do
    log "$name: $N requests, then 0"
    with="$(instructions "${SETUPS[$name]}" "$N")"
    without="$(instructions "${SETUPS[$name]}" 0)"
    per=$(( (with - without) / N ))
    log "$name: $with - $without = $per instructions per request"
    ROWS+="| ${name#*-} | $per |"$'\n'
done

{
    echo
    echo "## $(date -u +%Y-%m-%d) callgrind: instructions per webhook request"
    echo
    echo "Command: \`$COMMAND\` on $(commit_line) ($("$GATEWAY_BIN" --version 2>/dev/null || echo "$GATEWAY_BIN")); $(machine_line). Release build, one HTTP"
    echo "worker, one scenario thread; instructions of (start + channel + N requests + stop)"
    echo "minus (start + channel + stop), over N. Repeatable: callgrind counts, it does not time."
    echo
    echo "| channel | instructions per request |"
    echo "|---|---|"
    printf '%s' "$ROWS"
} | tee -a "$ROOT/benches/RESULTS.md"
