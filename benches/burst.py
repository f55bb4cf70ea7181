"""Burst client: COUNT simultaneous POSTs to one URL (one connection each), and
optionally a probe that calls another URL every PROBE_MS until the burst is over.
Prints one JSON line: statuses, how many 503s had Retry-After, latency percentiles of
the burst and of the probe. Loopback only; bounded by --timeout.

  python3 benches/burst.py --url http://127.0.0.1:P/api/token/v1/T --count 500 \
      [--probe http://127.0.0.1:P/api/token/v1/U --probe-ms 50] [--timeout 60]
"""
import argparse
import asyncio
import json
import time
import urllib.parse


async def one(url, body, timeout):
    u = urllib.parse.urlsplit(url)
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(u.hostname, u.port), timeout)
        req = (f"POST {u.path} HTTP/1.1\r\nHost: {u.hostname}\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        writer.write(req)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        writer.close()
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        retry = any(l.lower().startswith("retry-after:") for l in lines[1:])
        return status, retry, (time.monotonic() - started) * 1000
    except Exception:
        return 0, False, (time.monotonic() - started) * 1000


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(len(s) * p))], 1)


async def main(a):
    body = a.body.encode()
    done = asyncio.Event()
    probe_ms = []

    async def probe():
        while not done.is_set():
            status, _, ms = await one(a.probe, b"", a.timeout)
            probe_ms.append(ms if status == 200 else float("inf"))
            try:
                await asyncio.wait_for(done.wait(), a.probe_ms / 1000)
            except asyncio.TimeoutError:
                pass

    probe_task = asyncio.create_task(probe()) if a.probe else None
    started = time.monotonic()
    results = await asyncio.gather(*(one(a.url, body, a.timeout) for _ in range(a.count)))
    wall = time.monotonic() - started
    done.set()
    if probe_task:
        await probe_task
    statuses = {}
    for s, _, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    ok_ms = [ms for s, _, ms in results if s == 200]
    print(json.dumps({
        "count": a.count,
        "wall_s": round(wall, 2),
        "statuses": statuses,
        "refused_with_retry_after": sum(1 for s, r, _ in results if s == 503 and r),
        "ok_p50_ms": pct(ok_ms, 0.5), "ok_max_ms": pct(ok_ms, 1.0),
        "refused_p50_ms": pct([ms for s, _, ms in results if s == 503], 0.5),
        "refused_p99_ms": pct([ms for s, _, ms in results if s == 503], 0.99),
        "refused_max_ms": pct([ms for s, _, ms in results if s == 503], 1.0),
        "probe_n": len(probe_ms), "probe_p50_ms": pct(probe_ms, 0.5),
        "probe_p99_ms": pct(probe_ms, 0.99),
    }))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--body", default="{}")
    p.add_argument("--probe")
    p.add_argument("--probe-ms", type=int, default=50)
    p.add_argument("--timeout", type=float, default=60)
    asyncio.run(main(p.parse_args()))
