"""Report of the soak benchmark (benches/soak_run.sh): reads the client's JSON lines
(samples.jsonl) and the receiver's stats (sink-stats.json) in OUT, fits the slopes of RSS
and open descriptors after the warm-up, prints the table and the verdict, and appends a
section to RESULTS. Exit status 1 on FAIL or on errors during the run.

  python3 benches/soak_report.py OUT RESULTS DATE MACHINE COMMAND COMMIT DURATION_S \
      WARMUP_S FD_SLOPE_MAX EXPECTED_DELIVERIES SUBSCRIPTIONS WORKERS SCENARIO_THREADS
"""
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_md import append_section, print_problems
out, results, date, machine, command, commit = sys.argv[1:7]
duration_s, warmup_s, fd_slope_max = float(sys.argv[7]), float(sys.argv[8]), float(sys.argv[9])
expected, subs = int(sys.argv[10]), int(sys.argv[11])
workers, threads = sys.argv[12:14]
# Each SQLite connection of the database pool holds two descriptors (the database and its
# WAL); the pool opens up to db_pool_size (8) on demand and keeps them.
POOL_FDS = 2 * 8
lines = [json.loads(l) for l in open(os.path.join(out, "samples.jsonl"))]
idle = next(l["idle"] for l in lines if "idle" in l)
end = next(l for l in lines if "end" in l)
totals = end["totals"]
samples = [l for l in lines if "i" in l]
sink = json.load(open(os.path.join(out, "sink-stats.json")))

def slope(points):  # least squares, y per minute
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    return sum((t - mx) * (y - my) for t, y in points) / sxx if sxx else 0.0

mb = lambda kib: kib * 1024 / 1e6
fitted = [s for s in samples if s["t_s"] >= warmup_s]
rss_slope = slope([(s["t_s"] / 60, mb(s["rss_kib"])) for s in fitted])
fd_slope = slope([(s["t_s"] / 60, s["fds"]) for s in fitted])
rss_pass = rss_slope < 1.0
# Idle again: the same descriptors as before the load, give or take the pool's.
fd_back = end["end"]["fds"] <= idle["fds"] + POOL_FDS
fd_pass = fd_slope < fd_slope_max and fd_back
verdict = "PASS" if rss_pass and fd_pass else "FAIL"

problems = []
def non2xx(key):
    bad = sum(s[key]["sent"] - s[key]["ok"] for s in samples)
    errs = {}
    for s in samples:
        for k, v in list(s[key]["errors"].items()) + [(f"HTTP {c}", n) for c, n in s[key]["statuses"].items() if not c.startswith("2")]:
            errs[k] = errs.get(k, 0) + v
    if bad:
        problems.append(f"{key}: {bad} of {sum(s[key]['sent'] for s in samples)} not answered 2xx: {errs}")
non2xx("webhooks")
non2xx("events")
if totals.get("ws_errors") or totals.get("ws_other_replies"):
    ws_errs = {}
    for s in samples:
        for k, v in s["ws"]["errors"].items():
            ws_errs[k] = ws_errs.get(k, 0) + v
    problems.append(f"websockets: {totals.get('ws_errors')} errors ({ws_errs}), {totals.get('ws_other_replies')} replies other than the echo")
if sink["received"] != expected or sink["distinct_ids"] != expected:
    problems.append(f"deliveries: {sink['received']} received ({sink['distinct_ids']} distinct webhook-ids) of {expected}")
if sink["bad_signature"] or sink["signature_checked"] != sink["received"]:
    problems.append(f"deliveries: {sink['bad_signature']} bad signatures, {sink['signature_checked']} of {sink['received']} checked")
late = sum(s["webhooks"]["late"] + s["events"]["late"] for s in samples)
if late > sum(s["webhooks"]["sent"] + s["events"]["sent"] for s in samples) // 100:
    problems.append(f"the client left {late} requests late: the offered rate was not offered")

fmt = lambda v: "n/a" if v is None else f"{v:,.1f}"
rows = [f"| {s['i']} | {s['t_s'] / 60:.2f} | {mb(s['rss_kib']):.1f} | {s['fds']} | {fmt(s['webhooks']['p99_ms'])} | "
        f"{s['webhooks']['ok']:,}/{s['webhooks']['sent']:,} | {s['events']['ok']:,} | {s['ws']['opened']} | "
        f"{s['ws']['round_trips']:,} | {fmt(s['ws']['p99_ms'])} |{' warm-up' if s['t_s'] < warmup_s else ''}" for s in samples]
table = "\n".join(["| # | t min | RSS MB | fds | webhook p99 ms | webhooks 2xx/sent | events 2xx | ws sessions opened | ws round trips | ws p99 ms | |",
                   "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", *rows])
summary = (f"RSS slope {rss_slope:+.3f} MB/min (< 1: {'pass' if rss_pass else 'FAIL'}); "
           f"fds slope {fd_slope:+.3f}/min (< {fd_slope_max}: {'pass' if fd_slope < fd_slope_max else 'FAIL'}), "
           f"idle fds {idle['fds']} before the load, {end['end']['fds']} after it ({'pass' if fd_back else 'FAIL'}); "
           f"fitted over the {len(fitted)} samples after the {warmup_s:.0f} s warm-up")
print("\n" + table + "\n\n" + f"**{verdict}**: " + summary)
section = f"""
## Soak: {duration_s / 60:g} minutes of mixed load ({date})

- machine: {machine}
- commit: {commit}
- command: `{command}`
- gateway: release build, {workers} HTTP worker(s), {threads} scenario thread(s), SQLite in a temp dir, `access_log = false`, `log_level = warn`, `--allow-private-targets`; a public channel (`wait_for_completion`, webhook scenario `response_content = "ok";`, websocket scenario `response_content = startparam(2);`) and an eventing channel with {subs} webhook subscription(s) to `webhook_sink`
- load (`soak_load`, one thread): webhooks open loop (latency from when each request was due; new connections every interval), websocket sessions that each do their round trips then close and reopen, events published one a request (open loop), delivered to every subscription; after the load every delivery was waited for: {sink['received']:,} received of {expected:,}, {sink['distinct_ids']:,} distinct `webhook-id`s, {sink['signature_checked'] - sink['bad_signature']:,} signatures verified
- totals: webhooks {totals.get('webhooks_ok', 0):,} 2xx of {totals.get('webhooks_sent', 0):,}; events {totals.get('events_ok', 0):,} acknowledged of {totals.get('events_sent', 0):,}; websocket sessions {totals.get('ws_opened', 0):,} opened, {totals.get('ws_closed', 0):,} closed, {totals.get('ws_round_trips', 0):,} round trips, {totals.get('ws_errors', 0)} errors
- sampling: every interval, in its middle, the gateway's `VmRSS` (/proc/PID/status) and open descriptors (/proc/PID/fd); webhook p99 of that interval. Idle before the load: RSS {mb(idle['rss_kib']):.1f} MB, {idle['fds']} fds; idle after it (sessions closed, 2 s later): RSS {mb(end['end']['rss_kib']):.1f} MB, {end['end']['fds']} fds
- fit: least-squares slope over the samples after the first {warmup_s:.0f} s (warm-up: caches, pools, allocator arenas fill); MB = 10^6 bytes. Pass: RSS grows < 1 MB/min; descriptors do not grow (slope < {fd_slope_max}/min, and once the load stopped back to the idle count give or take the {POOL_FDS} that the database pool's 8 SQLite connections hold, 2 each, opened on demand and kept)
- the machine is shared (other builds ran at the same time on its 2 cores): latencies are noisy and say little here; the slopes are what this run measures
- **{verdict}**: {summary}

{table}
"""
print_problems(problems)
append_section(results, "# Benchmark results\n", section, problems)
sys.exit(0 if verdict == "PASS" and not problems else 1)
