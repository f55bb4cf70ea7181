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
