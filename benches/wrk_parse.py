"""wrk output: one run's numbers (`python3 wrk_parse.py one FILE`), and `parse()` /
`medians()` for the benchmark reports (run.sh, forward_run.sh, cluster_run.sh)."""
import re
import statistics
import sys


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


def medians(paths, key, problems):
    """Median rps/p50/p99 over the runs in `paths`; problems found are appended."""
    runs = [parse(p) for p in paths]
    for i, r in enumerate(runs, 1):
        if r["rps"] <= 0 or r["requests"] == 0:
            problems.append(f"{key} round {i}: no requests measured")
        if r["socket_errors"]:
            problems.append(f"{key} round {i}: {r['socket_detail']}")
        if r["non2xx"]:
            problems.append(f"{key} round {i}: {r['non2xx']} non-2xx/3xx responses of {r['requests']}")
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50": statistics.median(r["p50"] for r in runs),
        "p99": statistics.median(r["p99"] for r in runs),
        "runs": [r["rps"] for r in runs],
    }


if __name__ == "__main__" and sys.argv[1] == "one":
    r = parse(sys.argv[2])
    print(f'{r["rps"]:.0f} req/s, p50 {r["p50"]:.3f} ms, p99 {r["p99"]:.3f} ms, '
          f'socket errors {r["socket_errors"]}, non-2xx {r["non2xx"]}')
