# Shared by the benchmark scripts (source it after setting BENCH_TAG and TMP):
# logging, and the processes a run starts, all stopped on exit, with the run's temp
# folder and (when PG_CREATED is set) its PostgreSQL database removed.

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
    rm -rf "$TMP"
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

commit_line() {
    echo "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock benches ':!benches/RESULTS.md' 2>/dev/null || echo ' (with uncommitted changes)')"
}

# The release gateway (built once per run), started on PORT with CONFIG and DATA dir
# (SQLite in DATA, or GATEWAY_DB_URL when set):
#   start_gateway_at PORT CONFIG DATA LOG [more flags...]   -> sets GATEWAY_PID
build_gateway() {
    log "building the gateway (cargo build --release)"
    cargo build --release || die "cargo build --release failed"
    GATEWAY_BIN="$ROOT/target/release/oktell-gateway"
    [[ -x "$GATEWAY_BIN" ]] || die "no $GATEWAY_BIN after the build"
}
# GATEWAY_BIN when the caller set it (another build to measure), else this tree's release.
given_or_built_gateway() {
    if [[ -n "${GATEWAY_BIN:-}" ]]; then
        [[ -x "$GATEWAY_BIN" ]] || die "GATEWAY_BIN=$GATEWAY_BIN is not an executable"
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
