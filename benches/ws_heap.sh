#!/usr/bin/env bash
# Where an idle websocket session's heap bytes go, by allocation site: bare actix-web
# (benches/bare_ws.rs) and the gateway's public channel, each under valgrind's dhat with
# SESSIONS and then 2 x SESSIONS sessions held (ws_load, --messages 0), read at the
# heap's peak (t-gmax); the difference over SESSIONS is what one more session costs
# (the node's own memory cancels out).
# Bytes are what was asked of the allocator (a buffer's whole capacity, touched or not),
# not RSS.
#
# dhat sees the C allocator only: the gateway must be a build with the system allocator
# (mimalloc calls no malloc), which bare_ws has already:
#
#   cargo build --release --features system-allocator && cp target/release/oktell-gateway /tmp/gw-sys
#   GATEWAY_BIN=/tmp/gw-sys SESSIONS=1000 bash benches/ws_heap.sh
#
# KEEP=dir keeps dhat's files (open them with dh_view.html).
set -euo pipefail
SESSIONS="${SESSIONS:-1000}"
PORT="${PORT:-18096}"
NOFILE="${NOFILE:-65536}"
ADMIN_TOKEN="bench-admin-token-0123456789"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/oktell-wsheap.XXXXXX")"
BENCH_TAG="ws-heap"
STARTUP_TIMEOUT_S=180
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
command -v valgrind >/dev/null || die "valgrind is missing (apt-get install valgrind)"
[[ -x "${GATEWAY_BIN:-}" ]] || die "GATEWAY_BIN must be a gateway built with --features system-allocator"
GATEWAY_GIVEN="$GATEWAY_BIN"
raise_fd_limit "$SESSIONS" sessions
# LOAD_BIN / BARE_BIN: already built executables (skips cargo).
LOAD_BIN="${LOAD_BIN:-$(bench_exe ws_load)}"
BARE_BIN="${BARE_BIN:-$(bench_exe bare_ws)}"

cat >"$TMP/gateway.toml" <<TOML
access_log = false
log_level = "warn"
workers = 1
scenario_threads = 1
ws_max_sessions_per_channel = $(( SESSIONS * 2 ))
ws_max_sessions_per_node = $(( SESSIONS * 2 ))
TOML

profile() { # server, sessions -> $TMP/<server>-<sessions>.json
    local server="$1" sessions="$2" url data="$TMP/data-$2" out="$TMP/$1-$2.json"
    mkdir -p "$data"
    if [[ "$server" == bare ]]; then
        valgrind --tool=dhat --dhat-out-file="$out" "$BARE_BIN" "127.0.0.1:$PORT" 1 \
            >>"$TMP/server.log" 2>&1 &
        SERVER_PID=$!
        PIDS+=("$SERVER_PID")
        wait_listening "$PORT" "$SERVER_PID" || die "bare_ws under dhat did not start"
        url="ws://127.0.0.1:$PORT/ws/token/v1/bench"
    else
        valgrind --tool=dhat --dhat-out-file="$out" "$GATEWAY_BIN" serve \
            --config "$TMP/gateway.toml" --listen "127.0.0.1:$PORT" --data-dir "$data" \
            --database-url "$data/bench.db" --admin-token "$ADMIN_TOKEN" >>"$TMP/server.log" 2>&1 &
        SERVER_PID=$!
        PIDS+=("$SERVER_PID")
        wait_http "http://127.0.0.1:$PORT/healthz" "$SERVER_PID" 5 \
            || die "gateway under dhat did not start (log: $TMP/server.log)"
        url="ws://127.0.0.1:$PORT/ws/token/v1/$(create_channel_json "$PORT" \
            '{"code": "ws-echo", "kind": "public", "websocket_scenario": "response_content = startparam(2);"}')"
    fi
    "$LOAD_BIN" --label probe --url "$url" --sessions 1 --messages 1 --settle-ms 0 \
        --timeout-s 120 >/dev/null 2>>"$TMP/load.log" || die "probe against $server failed"
    "$LOAD_BIN" --label "$server" --url "$url" --sessions "$sessions" --messages 0 \
        --connect-concurrency 50 --settle-ms 2000 --timeout-s 600 >"$TMP/load.json" 2>>"$TMP/load.log" \
        || die "ws_load against $server failed"
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(r["held_at_end"] != int(sys.argv[2]))' \
        "$TMP/load.json" "$sessions" || die "$server did not hold $sessions sessions"
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    PIDS=()
    [[ -z "${KEEP:-}" ]] || { mkdir -p "$KEEP"; cp "$out" "$KEEP/"; }
}

for server in bare gateway; do
    for n in "$SESSIONS" $(( SESSIONS * 2 )); do
        log "$server: $n idle sessions under dhat"
        profile "$server" "$n"
    done
done

{
    echo
    echo "## $(date -u +%Y-%m-%d) dhat: heap bytes per idle websocket session, by allocation site"
    echo
    echo "Command: \`GATEWAY_BIN=$GATEWAY_BIN SESSIONS=$SESSIONS bash benches/ws_heap.sh\` on $(commit_line); $(machine_line)."
    echo "Release builds on the system allocator; live heap at its peak with $(( SESSIONS * 2 )) idle sessions"
    echo "minus with $SESSIONS (each after one probe round trip), over $SESSIONS, by the first frames of the"
    echo "allocating stack that are not allocator or container code (rows of 16 bytes or more)."
    echo "Requested bytes: a buffer's untouched capacity counts too, unlike in RSS."
    python3 - "$TMP" "$SESSIONS" <<'PY'
import json, re, sys
tmp, n = sys.argv[1], int(sys.argv[2])
skip = re.compile(r"^(alloc::|__rust|malloc|calloc|realloc|memalign|posix_memalign|core::|<alloc|<core|"
                  r"hashbrown::|bytes::bytes_mut::BytesMut::(reserve|with_capacity|extend)|smallvec::|"
                  r"std::alloc|<T as alloc|dashmap::|\?\?\?|0x)")
def sites(path):
    d = json.load(open(path))
    rows = {}
    for pp in d["pps"]:
        if not pp.get("gb"):
            continue
        frames = [re.sub(r"^0x[0-9A-F]+: ", "", d["ftbl"][i]) for i in pp["fs"]]
        frames = [re.sub(r" \(.*\)$", "", f) for f in frames]
        keep = [f for f in frames if not skip.search(f)][:2]
        key = " ← ".join(re.sub(r"<[^<>]*>", "", k)[:70] for k in keep) or "(allocator only)"
        r = rows.setdefault(key, [0, 0])
        r[0] += pp["gb"]
        r[1] += pp["gbk"]
    return rows
for server in ("bare", "gateway"):
    one, two = sites(f"{tmp}/{server}-{n}.json"), sites(f"{tmp}/{server}-{2 * n}.json")
    rows = {k: [(two.get(k, [0, 0])[i] - one.get(k, [0, 0])[i]) / n for i in (0, 1)]
            for k in set(one) | set(two)}
    total = sum(b for b, _ in rows.values())
    blocks = sum(k for _, k in rows.values())
    print(f"\n**{server}**: {total:,.0f} bytes in {blocks:.1f} blocks per session\n")
    print("| bytes/session | blocks/session | allocated at |")
    print("|---:|---:|---|")
    for key, (b, k) in sorted(rows.items(), key=lambda kv: -abs(kv[1][0])):
        if abs(b) >= 16:
            print(f"| {b:,.0f} | {k:.2f} | `{key}` |")
PY
} | tee -a "$ROOT/benches/RESULTS.md"
