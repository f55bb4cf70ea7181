#!/usr/bin/env bash
# Instructions per request, counted by callgrind (valgrind): repeatable whatever else
# the machine does, unlike req/s. Each measurement runs a server under callgrind twice
# on a fresh start: once with the load, once with the same setup and no load; the
# difference over the load's count is the cost of one request (or round trip).
#
# MODE=webhook (default): the release gateway on a fresh SQLite, creating the channel
# and sending N webhooks over one keep-alive connection (then none): accept, route,
# guards, scenario run, reply. Setups: a channel without guards (wait off and on), with
# `verify` (a valid GitHub-style signature), with `allow_ips` + `rate_limit`, and wait on
# with `history = all` (every run recorded). Threads are counted apart and summed by
# what they run: the HTTP worker, the scenario thread, everything else (the executions
# writer, the database threads).
#
#   N=2000 bash benches/callgrind_run.sh
#
# WORKERS (both modes, default 1): HTTP workers, and scenario threads of the gateway;
# `WORKERS=$(nproc)` measures the shipped default, inline runs included.
#
# MODE=ws: websocket echo round trips, bare actix-web (benches/bare_ws.rs) and the
# gateway's public channel (`response_content = startparam(2);`), both with WORKERS HTTP
# workers (default 1; the gateway with as many scenario threads; inline runs are on only
# when WORKERS is the number of cores, as shipped). The load client is ws_load (not under
# callgrind): SESSIONS sessions held, then each does MESSAGES sequential round trips
# (then none); the sessions' connects and closes cancel out. Threads are counted apart
# (`--separate-threads=yes`) and summed by what they run: the HTTP worker (the one that
# runs actix-http's dispatcher), the scenario thread(s), everything else.
#
#   MODE=ws SESSIONS=1000 MESSAGES=10 bash benches/callgrind_run.sh
#
# GATEWAY_BIN=path measures another build (say, an older commit's) instead of building
# this one; ONLY=regex keeps the setups (webhook) or servers (ws: bare, gateway) whose
# names match (an older build may lack the guard fields); KEEP=dir keeps the profiles
# (callgrind_annotate them).
set -euo pipefail
MODE="${MODE:-webhook}"
N="${N:-2000}"
SESSIONS="${SESSIONS:-1000}"
WORKERS="${WORKERS:-1}"
MESSAGES="${MESSAGES:-10}"
PORT="${PORT:-18095}"
NOFILE="${NOFILE:-65536}"
ADMIN_TOKEN="bench-admin-token-0123456789"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
case "$MODE" in
    webhook) COMMAND="N=$N WORKERS=$WORKERS bash benches/callgrind_run.sh" ;;
    ws) COMMAND="MODE=ws SESSIONS=$SESSIONS MESSAGES=$MESSAGES WORKERS=$WORKERS bash benches/callgrind_run.sh" ;;
    *) echo "MODE is webhook or ws" >&2; exit 2 ;;
esac
TMP="$(mktemp -d "${TMPDIR:-/tmp}/oktell-callgrind.XXXXXX")"
BENCH_TAG="callgrind"
STARTUP_TIMEOUT_S=180
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
command -v valgrind >/dev/null || die "valgrind is missing (apt-get install valgrind)"
if [[ -n "${GATEWAY_BIN:-}" ]]; then
    [[ -x "$GATEWAY_BIN" ]] || die "GATEWAY_BIN=$GATEWAY_BIN is not executable"
    GATEWAY_GIVEN="$GATEWAY_BIN"
    COMMAND="GATEWAY_BIN=$GATEWAY_BIN ONLY=${ONLY:-} $COMMAND"
elif [[ "$MODE" == webhook || "gateway" =~ ${ONLY:-.} ]]; then
    build_gateway
fi
[[ -n "${KEEP:-}" ]] && mkdir -p "$KEEP"

cat >"$TMP/gateway.toml" <<TOML
access_log = false
log_level = "warn"
workers = $WORKERS
scenario_threads = $WORKERS
TOML

# --- one server life under callgrind ------------------------------------------------------
# callgrind_start NAME COMMAND...: starts it (SERVER_PID), profiles under $TMP/NAME.*
callgrind_start() {
    local name="$1"
    shift
    valgrind --tool=callgrind --callgrind-out-file="$TMP/$name.cg" --dump-instr=no \
        --separate-threads="${SEPARATE_THREADS:-no}" "$@" >>"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
}

# callgrind_stop NAME: stops the server; THREADS gets "label instructions" per profile
# file (label: worker, scenario or other; one line per thread with SEPARATE_THREADS=yes).
# Not run in a subshell: a failure must reach the cleanup of the processes started.
LIFE=0
callgrind_stop() {
    local name="$1" f label
    LIFE=$(( LIFE + 1 ))
    # Not stop_pid: under callgrind a clean stop takes longer than its 5 s, and a KILL
    # writes no profile.
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    PIDS=()
    compgen -G "$TMP/$name.cg*" >/dev/null || die "no callgrind profile from $name"
    THREADS=""
    for f in "$TMP/$name".cg*; do
        [[ -s "$f" ]] || continue
        if grep -q 'h1::dispatcher' "$f"; then
            label=worker
        elif grep -q 'scenario::pool::work' "$f"; then
            label=scenario
        else
            label=other
        fi
        THREADS+="$label $(awk '/^summary:|^totals:/ {print $2; exit}' "$f")"$'\n'
        [[ -n "${KEEP:-}" ]] && cp "$f" "$KEEP/life$LIFE-$(basename "$f")"
    done
    rm -f "$TMP/$name".cg*
}

# The instructions of the lines labelled LABEL (all lines without one) on stdin.
sum_of() { awk -v l="${1:-}" '(l == "" || $1 == l) { s += $2 } END { printf "%.0f\n", s }'; }

# --- webhooks ------------------------------------------------------------------------------
webhook_mode() {
    # GitHub's documented example: secret, body, X-Hub-Signature-256.
    local secret="It's a Secret to Everybody" body='Hello, World!'
    local signature='sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17'
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
    # Total instructions (TOTAL) of one gateway life: start, create the channel, send
    # COUNT, stop.
    instructions() { # channel json, count
        local data="$TMP/data-$RANDOM" token label
        mkdir -p "$data"
        callgrind_start webhook "$GATEWAY_BIN" serve --config "$TMP/gateway.toml" \
            --listen "127.0.0.1:$PORT" --data-dir "$data" --database-url "$data/bench.db" \
            --admin-token "$ADMIN_TOKEN"
        wait_http "http://127.0.0.1:$PORT/healthz" "$SERVER_PID" 5 \
            || die "gateway under callgrind did not start (log: $TMP/server.log)"
        token="$(create_channel_json "$PORT" "$1")"
        python3 "$TMP/send.py" "$PORT" "$token" "$2" "$signature" "$body" || die "requests failed"
        callgrind_stop webhook
        TOTAL="$(sum_of <<<"$THREADS")"
        for label in worker scenario other; do
            PART[$label]="$(sum_of "$label" <<<"$THREADS")"
        done
    }
    SEPARATE_THREADS=yes
    local script='"webhook_scenario": "let x = 1;"' name with without per rows="" label
    local -A PART=() part_with=()
    declare -A setups=(
        [1-none-wait-off]="{\"code\": \"c\", \"kind\": \"public\", $script}"
        [2-none-wait-on]="{\"code\": \"c\", \"kind\": \"public\", \"wait_for_completion\": true, $script}"
        [3-verify]="{\"code\": \"c\", \"kind\": \"public\", $script, \"verify\": {\"scheme\": \"hmac-sha256-header\", \"header\": \"X-Hub-Signature-256\", \"prefix\": \"sha256=\", \"secret\": \"$secret\"}}"
        [4-allow-rate]="{\"code\": \"c\", \"kind\": \"public\", $script, \"allow_ips\": [\"127.0.0.0/8\"], \"rate_limit\": {\"per_second\": 1000000}}"
        [5-history-all]="{\"code\": \"c\", \"kind\": \"public\", \"wait_for_completion\": true, \"history\": \"all\", $script}"
    )
    for name in $(printf '%s\n' "${!setups[@]}" | sort | grep -E "${ONLY:-.}"); do
        log "$name: $N requests, then 0"
        instructions "${setups[$name]}" "$N"
        with="$TOTAL"
        for label in worker scenario other; do part_with[$label]="${PART[$label]}"; done
        instructions "${setups[$name]}" 0
        without="$TOTAL"
        per=$(( (with - without) / N ))
        log "$name: $with - $without = $per instructions per request"
        rows+="| ${name#*-} | $per"
        for label in worker scenario other; do
            rows+=" | $(( (part_with[$label] - PART[$label]) / N ))"
        done
        rows+=" |"$'\n'
    done
    {
        echo
        echo "## $(date -u +%Y-%m-%d) callgrind: instructions per webhook request"
        echo
        echo "Command: \`$COMMAND\` on $(commit_line) ($("$GATEWAY_BIN" --version 2>/dev/null || echo "$GATEWAY_BIN")); $(machine_line). Release build, $WORKERS HTTP"
        echo "worker(s), as many scenario threads; instructions of (start + channel + N requests + stop)"
        echo "minus (start + channel + stop), over N. Repeatable: callgrind counts, it does not time."
        echo
        echo "| channel | instructions per request | HTTP worker | scenario thread | other threads |"
        echo "|---|---:|---:|---:|---:|"
        printf '%s' "$rows"
    } | tee -a "$ROOT/benches/RESULTS.md"
}

# --- websocket round trips -----------------------------------------------------------------
ws_mode() {
    SEPARATE_THREADS=yes
    # LOAD_BIN / BARE_BIN: already built executables (skips cargo).
    local load_bin="${LOAD_BIN:-}" bare_bin="${BARE_BIN:-}"
    [[ -n "$load_bin" ]] || load_bin="$(bench_exe ws_load)"
    [[ -n "$bare_bin" ]] || bare_bin="$(bench_exe bare_ws)"
    # No heartbeat during the run (bare has none; pings would count with the run's
    # length), no refusal for the queue or the channel's in-flight limit (a refused
    # message is retried, and the retry counts too), and a deadline that callgrind's
    # slowness does not reach, past the heartbeat interval as with the defaults (a
    # session arms a timer for a run only when its bound comes before the next tick).
    cat >>"$TMP/gateway.toml" <<TOML
ws_heartbeat_interval_ms = 3600000
ws_heartbeat_timeout_ms = 7200000
scenario_timeout_ms = 7200000
channel_max_in_flight = $(( SESSIONS * 2 ))
scenario_max_admitted = $(( SESSIONS * 2 ))
ws_max_sessions_per_channel = $(( SESSIONS * 2 ))
ws_max_sessions_per_node = $(( SESSIONS * 2 ))
TOML
    raise_fd_limit "$SESSIONS" sessions
    # Per-thread instructions (THREADS) of one server life: start, a probe
    # (one round trip: the gateway compiles its script), SESSIONS sessions doing COUNT
    # round trips each, stop.
    ws_life() { # server, count
        local server="$1" count="$2" url data="$TMP/data-$RANDOM" token result
        mkdir -p "$data"
        if [[ "$server" == bare ]]; then
            callgrind_start "ws-$server-$count" "$bare_bin" "127.0.0.1:$PORT" "$WORKERS"
            wait_listening "$PORT" "$SERVER_PID" || die "bare_ws under callgrind did not start"
            url="ws://127.0.0.1:$PORT/ws/token/v1/bench"
        else
            callgrind_start "ws-$server-$count" "$GATEWAY_BIN" serve --config "$TMP/gateway.toml" \
                --listen "127.0.0.1:$PORT" --data-dir "$data" --database-url "$data/bench.db" \
                --admin-token "$ADMIN_TOKEN"
            wait_http "http://127.0.0.1:$PORT/healthz" "$SERVER_PID" 5 \
                || die "gateway under callgrind did not start (log: $TMP/server.log)"
            token="$(create_channel_json "$PORT" \
                '{"code": "ws-echo", "kind": "public", "websocket_scenario": "response_content = startparam(2);"}')"
            url="ws://127.0.0.1:$PORT/ws/token/v1/$token"
        fi
        "$load_bin" --label probe --url "$url" --sessions 1 --messages 1 --settle-ms 0 \
            --timeout-s 120 >"$TMP/probe.json" 2>>"$TMP/load.log" || die "probe against $server failed"
        "$load_bin" --label "$server" --url "$url" --sessions "$SESSIONS" --messages "$count" \
            --connect-concurrency "${CONNECT_CONCURRENCY:-50}" --settle-ms 200 --timeout-s 1800 \
            >"$TMP/load.json" 2>>"$TMP/load.log" || die "ws_load against $server failed"
        result="$(python3 - "$TMP/load.json" "$SESSIONS" "$count" <<'PY'
import json, sys
r, sessions, count = json.load(open(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
ok = (not r["timed_out"] and r["connect_errors"] == 0 and r["held_at_end"] == sessions
      and r["other_replies"] == 0 and r["round_trips"] == sessions * count)
print("ok" if ok else f"held {r['held_at_end']}/{sessions}, echoes {r['round_trips']}/{sessions * count}, "
      f"other replies {r['other_reply_kinds']}, connect errors {r['connect_error_kinds']}, timed out {r['timed_out']}")
PY
)"
        [[ "$result" == ok ]] || die "$server, $count round trips: $result"
        if [[ "$server" == gateway ]]; then
            local retries
            retries="$(metric_sum "$PORT" oktell_ws_retries_total)"
            [[ "$retries" == 0 ]] || die "gateway retried $retries refused messages (not a clean count)"
        fi
        callgrind_stop "ws-$server-$count"
    }
    local server rows="" with without label total per_total messages=$(( SESSIONS * MESSAGES ))
    for server in bare gateway; do
        [[ "$server" =~ ${ONLY:-.} ]] || continue
        log "$server: $SESSIONS sessions x $MESSAGES round trips, then x 0"
        ws_life "$server" "$MESSAGES"
        with="$THREADS"
        ws_life "$server" 0
        without="$THREADS"
        total=$(( ($(sum_of <<<"$with") - $(sum_of <<<"$without")) / messages ))
        per_total=""
        for label in worker scenario other; do
            per=$(( ($(sum_of "$label" <<<"$with") - $(sum_of "$label" <<<"$without")) / messages ))
            per_total+=" | $per"
        done
        log "$server: $total instructions per round trip (worker | scenario | other$per_total)"
        rows+="| $server | $total$per_total |"$'\n'
    done
    {
        echo
        echo "## $(date -u +%Y-%m-%d) callgrind: instructions per websocket round trip"
        echo
        echo "Command: \`$COMMAND\` on $(commit_line); $(machine_line). Release builds,"
        echo "$WORKERS HTTP worker(s) each, the gateway with as many scenario threads, no heartbeat; ws_load"
        echo "(not counted) holds $SESSIONS sessions, then each does $MESSAGES sequential round trips."
        echo "Instructions of the server's life with the round trips minus its life without,"
        echo "over the round trips, by thread (worker: actix-http's dispatcher; scenario: the"
        echo "scenario pool's threads; other: the rest). Callgrind counts, it does not time."
        echo
        echo "| server | per round trip | worker | scenario | other |"
        echo "|---|---:|---:|---:|---:|"
        printf '%s' "$rows"
    } | tee -a "$ROOT/benches/RESULTS.md"
}

"${MODE}_mode"
