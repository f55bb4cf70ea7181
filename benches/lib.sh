# Shared by the benchmark scripts. Source it after setting BENCH_TAG (the log prefix), then
# call `bench_run_dirs NAME`: ROOT (the repository, made the working folder), ADMIN_TOKEN,
# logging, the run's folders, and the processes a run starts, all stopped on exit, with
# the run's temp folder and (when PG_CREATED is set) its PostgreSQL database removed.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ADMIN_TOKEN="bench-admin-token-0123456789"
# How long a started server may take to answer (seconds).
STARTUP_TIMEOUT_S="${STARTUP_TIMEOUT_S:-30}"
# Python reports import the shared modules (wrk_parse.py, results_md.py) from here.
export BENCHES_DIR="$ROOT/benches"
# The run's temp folder, removed on exit: only one a script made itself (older scripts
# make theirs before sourcing this file), never a TMP from the caller's environment.
[[ "${TMP:-}" == */oktell-* ]] || TMP=""

# The run's id, its raw output folder benches/out/NAME-<id> (git-ignored, kept) and a
# temp folder (removed on exit): RUN_ID, OUT and TMP.
bench_run_dirs() { # name
    RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
    OUT="$ROOT/benches/out/$1-$RUN_ID"
    mkdir -p "$OUT"
    TMP="$(mktemp -d "${TMPDIR:-/tmp}/oktell-$1-bench.XXXXXX")"
}

# The end of a run with a report: where its raw output is, and the run fails when the
# report saw problems (its exit status).
report_done() { # report status, what the raw output folder holds
    log "$2: $OUT"
    log "appended to benches/RESULTS.md"
    (( $1 == 0 )) || die "errors during the run (see PROBLEMS above)"
}

log() { printf '[%s %s] %s\n' "${BENCH_TAG:-bench}" "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

PIDS=()
PG_CREATED="${PG_CREATED:-}"

alive() { # running and not a zombie waiting to be reaped
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        log "pid $pid did not stop on TERM within 5s: KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    local kept=() other
    for other in "${PIDS[@]+"${PIDS[@]}"}"; do
        [[ "$other" == "$pid" ]] || kept+=("$other")
    done
    PIDS=("${kept[@]+"${kept[@]}"}")
}

psql_admin() { # sql
    psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_ADMIN_DB" -c "$1"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cleanup() {
    local pid
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        stop_pid "$pid"
    done
    PIDS=()
    if [[ -n "$PG_CREATED" ]]; then
        psql_admin "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 \
            || log "could not drop database $PG_DB (drop it by hand)"
        PG_CREATED=""
    fi
    [[ -z "$TMP" ]] || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Builds the named bench targets (release) and prints the executable of NAME.
#   BIN="$(bench_exe NAME)"
bench_exe() { # name
    cargo bench --no-run --bench "$1" --message-format=json >"$TMP/build-$1.json" \
        || die "building the $1 bench failed"
    local exe
    exe="$(python3 - "$1" "$TMP/build-$1.json" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
exe = ""
for line in open(path):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == name and msg.get("executable"):
        exe = msg["executable"]
print(exe)
PY
)"
    [[ -n "$exe" && -x "$exe" ]] || die "could not find the $1 executable in cargo's output"
    printf '%s\n' "$exe"
}

# Raises the open-files limit towards NOFILE (the hard limit is the ceiling without
# CAP_SYS_RESOURCE) and checks it and the ephemeral port range against COUNT sockets.
raise_fd_limit() { # count, what (for messages)
    local count="$1" what="$2" needed=$(( $1 + 1024 ))
    if (( $(ulimit -Sn) < NOFILE )); then
        if ! ulimit -n "$NOFILE" 2>/dev/null; then
            log "cannot raise the open-files limit to $NOFILE (hard limit $(ulimit -Hn)); using the hard limit"
            ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
        fi
    fi
    (( $(ulimit -Sn) >= needed )) \
        || die "open-files limit $(ulimit -Sn) (hard $(ulimit -Hn)) is below the $needed that $count $what need: raise the hard limit (limits.conf / systemd LimitNOFILE / docker --ulimit nofile=65536) or run with CAP_SYS_RESOURCE"
    # PORT_LO and PORT_HI stay set for the scripts' reports.
    read -r PORT_LO PORT_HI </proc/sys/net/ipv4/ip_local_port_range
    (( PORT_HI - PORT_LO + 1 >= count )) \
        || die "ephemeral port range $PORT_LO-$PORT_HI is smaller than $count $what"
    log "open files limit $(ulimit -n); ephemeral ports $PORT_LO-$PORT_HI; somaxconn $(cat /proc/sys/net/core/somaxconn)"
}

# --- wrk runs and gateway processes (run.sh, forward_run.sh) ------------------------------
# These use OUT (raw output folder), TMP, ROOT and STARTUP_TIMEOUT_S (default 30).

seconds_of() { # 10s / 2m / 10 -> seconds (for watchdogs)
    local d="$1"
    case "$d" in
        *ms) echo 1 ;;
        *s) echo "${d%s}" ;;
        *m) echo $(( ${d%m} * 60 )) ;;
        *h) echo $(( ${d%h} * 3600 )) ;;
        *) echo "$d" ;;
    esac
}

wait_http() { # url, pid, [seconds per try]: poll until the URL answers 2xx, the process dies, or the deadline
    local url="$1" pid="$2" per_try="${3:-1}" deadline=$(( SECONDS + ${STARTUP_TIMEOUT_S:-30} ))
    while (( SECONDS < deadline )); do
        alive "$pid" || return 1
        curl -fsSk -o /dev/null --max-time "$per_try" "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

wait_listening() { # port, pid: poll until the port accepts, the process dies, or the deadline
    local port="$1" pid="$2" deadline=$(( SECONDS + ${STARTUP_TIMEOUT_S:-30} ))
    while (( SECONDS < deadline )); do
        alive "$pid" || return 1
        port_in_use "$port" && return 0
        sleep 0.1
    done
    return 1
}

ensure_wrk() { # installs Debian's wrk when missing; checks the other tools
    local sudo=""
    [[ $EUID -ne 0 ]] && command -v sudo >/dev/null && sudo="sudo"
    if ! command -v wrk >/dev/null; then
        log "installing wrk"
        apt-cache show wrk >/dev/null 2>&1 || $sudo apt-get update
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y wrk
    fi
    local tool
    for tool in wrk curl python3 cargo timeout "$@"; do
        command -v "$tool" >/dev/null || die "$tool is needed"
    done
}

# One wrk measurement (after an unmeasured warm-up of WARMUP unless 0):
#   run_wrk LABEL URL ROUND [CONNECTIONS] [LUA SCRIPT]  -> $OUT/<label>-<round>.txt
# Uses THREADS, DURATION, WARMUP, CONNECTIONS and WRK_SCRIPT as defaults.
run_wrk() {
    local label="$1" url="$2" round="$3" conns="${4:-$CONNECTIONS}" script="${5:-$WRK_SCRIPT}"
    local file="$OUT/$1-$3.txt" limit
    limit=$(( $(seconds_of "$DURATION") + 30 ))
    if [[ "$WARMUP" != "0" && "$WARMUP" != "0s" ]]; then
        timeout "$(( $(seconds_of "$WARMUP") + 30 ))" \
            wrk -t"$THREADS" -c"$conns" -d"$WARMUP" -s "$script" "$url" \
            >"$OUT/$label-$round.warmup.txt" 2>&1 || die "wrk warm-up against $label failed"
        # The warm-up's connections are gone, but their runs may still wait on an
        # upstream (and hold their channel's in-flight slots): let them end first.
        sleep "${WARMUP_SETTLE:-0}"
    fi
    timeout "$limit" wrk -t"$THREADS" -c"$conns" -d"$DURATION" --latency -s "$script" "$url" \
        >"$file" 2>&1 || die "wrk against $label failed: $(tail -3 "$file")"
    log "round $round $label: $(python3 "$ROOT/benches/wrk_parse.py" one "$file")"
}

machine_line() {
    local cpu
    cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "nproc $(nproc), ${cpu:-unknown CPU}, $(uname -sr), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
}

# The commit measured; with GATEWAY_BIN given, that binary (the tree gave only the benches).
commit_line() {
    local tree
    tree="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock benches ':!benches/RESULTS.md' 2>/dev/null || echo ' (with uncommitted changes)')"
    if [[ -n "${GATEWAY_GIVEN:-}" ]]; then
        echo "gateway binary $GATEWAY_GIVEN (not this tree's; benches from $tree)"
    else
        echo "$tree"
    fi
}

# Before anything starts: every backend of BACKENDS is known, PostgreSQL reachable.
check_backends() {
    local backend
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
}

# Runs the script's `run_backend NAME PORT DATABASE_URL` on each of BACKENDS: SQLite in
# TMP (port SQLITE_PORT), PostgreSQL in a fresh database PG_DB (port POSTGRES_PORT),
# dropped after (and on exit, through PG_CREATED).
run_backends() {
    local backend
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
}

# The release gateway (built once per run), started on PORT with CONFIG and DATA dir
# (SQLite in DATA, or GATEWAY_DB_URL when set):
#   start_gateway_at PORT CONFIG DATA LOG [more flags...]   -> sets GATEWAY_PID
build_gateway() {
    log "building the gateway (cargo build --release)"
    cargo build --release || die "cargo build --release failed"
    GATEWAY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/oktell-gateway"
    [[ -x "$GATEWAY_BIN" ]] || die "no $GATEWAY_BIN after the build"
}
# GATEWAY_BIN when the caller set it (another build to measure), else this tree's release.
given_or_built_gateway() {
    if [[ -n "${GATEWAY_BIN:-}" ]]; then
        [[ -x "$GATEWAY_BIN" ]] || die "GATEWAY_BIN=$GATEWAY_BIN is not an executable"
        log "using the gateway binary $GATEWAY_BIN (not building)"
        # commit_line names it instead of this tree's commit.
        GATEWAY_GIVEN="$GATEWAY_BIN"
    else
        build_gateway
    fi
}
# EXTRA_SETTINGS (any benchmark): lines added to the gateway's config, for an A/B of a
# setting in the same script (e.g. EXTRA_SETTINGS='scenario_inline_us = 0').
start_gateway_at() {
    local port="$1" config="$2" data="$3" logf="$4"
    shift 4
    if [[ -n "${EXTRA_SETTINGS:-}" ]]; then
        { cat "$config"; printf '\n%s\n' "$EXTRA_SETTINGS"; } >"$config.settings.toml"
        config="$config.settings.toml"
    fi
    "$GATEWAY_BIN" serve --config "$config" --listen "127.0.0.1:$port" --data-dir "$data" \
        --database-url "${GATEWAY_DB_URL:-$data/bench.db}" --admin-token "$ADMIN_TOKEN" --log-level warn "$@" \
        >>"$logf" 2>&1 &
    GATEWAY_PID=$!
    PIDS+=("$GATEWAY_PID")
    wait_http "http://127.0.0.1:$port/healthz" "$GATEWAY_PID" \
        || die "gateway did not become healthy (log: $logf)"
}

# The gateway of one backend's run (run_backends): data in TMP/BACKEND, its log
# OUT/gateway-BACKEND.log, GATEWAY_CONFIG, WORKERS and SCENARIO_THREADS.
#   start_backend_gateway BACKEND PORT DATABASE_URL [more flags...]   -> sets GATEWAY_PID
start_backend_gateway() {
    local backend="$1" port="$2" url="$3" data="$TMP/$1"
    shift 3
    mkdir -p "$data"
    port_in_use "$port" && die "port $port is in use (set SQLITE_PORT / POSTGRES_PORT)"
    GATEWAY_DB_URL="$url" start_gateway_at "$port" "$GATEWAY_CONFIG" "$data" "$OUT/gateway-$backend.log" \
        --workers "$WORKERS" --scenario-threads "$SCENARIO_THREADS" "$@"
}

# Dies unless the ports in the named variables are free: ports_free VAR...
ports_free() {
    local var
    for var in "$@"; do
        port_in_use "${!var}" && die "port ${!var} is in use (set $var)"
    done
    return 0
}

# The bare actix-web baseline BARE_BIN on BARE_PORT with WORKERS workers, its log
# OUT/bare-server.log; up once it answers 200 on READY_URL, or without one once the
# port listens:   start_bare [READY_URL]   -> sets BARE_PID
start_bare() {
    "$BARE_BIN" "127.0.0.1:$BARE_PORT" "$WORKERS" >>"$OUT/bare-server.log" 2>&1 &
    BARE_PID=$!
    PIDS+=("$BARE_PID")
    if [[ -n "${1:-}" ]]; then
        wait_http "$1" "$BARE_PID"
    else
        wait_listening "$BARE_PORT" "$BARE_PID"
    fi || die "bare server did not come up (log: $OUT/bare-server.log)"
}

# The gateway's settings for a report: CONFIG's lines and EXTRA_SETTINGS', each in
# backquotes, comma-separated:   settings_line CONFIG
settings_line() {
    { cat "$1"; printf '%s\n' "${EXTRA_SETTINGS:-}"; } | grep -v '^#' | grep -v '^$' \
        | sed 's/^/`/; s/$/`/' | paste -sd, - | sed 's/,/, /g'
}

# A top-level field of a JSON object: json_field JSON NAME
json_field() {
    python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

# Creates a channel from a JSON body on the gateway at PORT and prints its token.
create_channel_json() { # port, json
    local response
    response="$(curl -fsS --max-time 10 -X POST "http://127.0.0.1:$1/admin/v1/channels" \
        -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        -d "$2")" || die "creating a channel failed: $2"
    json_field "$response" token
}

# --- the webhook receiver (webhooks_run.sh, soak_run.sh) -----------------------------------
# SINK_BIN is webhook_sink (bench_exe webhook_sink).

# Starts the receiver on PORT, logging to LOG -> sets SINK_PID.
start_sink_at() { # port, log
    port_in_use "$1" && die "port $1 is in use (set SINK_PORT)"
    "$SINK_BIN" --listen "127.0.0.1:$1" >>"$2" 2>&1 &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    wait_http "http://127.0.0.1:$1/stats" "$SINK_PID" || die "the receiver did not come up (log: $2)"
}

# Subscribes the receiver's /hook/NAME to the eventing channel TOKEN on the gateway at
# PORT and gives the receiver that subscription's secret (it verifies every signature).
subscribe_sink() { # gateway port, channel token, sink port, name
    local response
    response="$(curl -fsS --max-time 10 -X POST "http://127.0.0.1:$1/api/token/v1/$2/subscribe" \
        -H 'Content-Type: application/json' \
        -d "{\"url\":\"http://127.0.0.1:$3/hook/$4\",\"description\":\"bench $4\"}")" \
        || die "subscribing the receiver's /hook/$4 failed"
    curl -fsS --max-time 10 -X PUT "http://127.0.0.1:$3/secret/$4" \
        --data-binary "$(json_field "$response" secret)" >/dev/null \
        || die "giving the receiver the secret of /hook/$4 failed"
}

# --- gateway metrics (history_run.sh) -------------------------------------------------------

# The sum of a metric's samples (every label set) on the gateway at PORT; 0 when absent.
metric_sum() { # port, name
    curl -fsS --max-time 10 "http://127.0.0.1:$1/metrics" -H "Authorization: Bearer $ADMIN_TOKEN" \
        | awk -v n="$2" '($1 == n || index($1, n "{") == 1) { s += $NF } END { printf "%.0f\n", s + 0 }'
}

# Polls until metric A + metric B reaches metric C on the gateway at PORT (e.g. records
# written + dropped = recorded), at most SECONDS; returns 1 on the deadline.
wait_metrics_settle() { # port, a, b, c, seconds
    local deadline=$(( SECONDS + $5 ))
    while (( SECONDS < deadline )); do
        local a b c
        a="$(metric_sum "$1" "$2")"; b="$(metric_sum "$1" "$3")"; c="$(metric_sum "$1" "$4")"
        (( a + b >= c )) && return 0
        sleep 0.2
    done
    return 1
}
