"""Load clients the benchmark runs in their own process (pinned away from the proxy).

`python -m bench.clients openloop URL RATE SECONDS`: one request every 1/RATE s, each in its own
task, so a slow answer never delays the next send (no coordinated omission); the first second
is warm-up. `sse URL COUNT`: sequential streams; time to first byte and per-event latency.
`hold URL STREAMS DEADLINE`: that many concurrent streams at once. Each prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
import time
from typing import Any

import aiohttp

BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write one short sentence about the sea, please."},
        ],
        "max_tokens": 64,
    }
).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer local-dummy"}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    # Nearest-rank: the smallest value with at least q of the samples at or below it.
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def openloop(url: str, rate: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0
    warmup = 1.0 if seconds > 2 else 0.2
    start = 0.0

    async def one(at: float) -> None:
        nonlocal errors
        # Timed from when the request was due, not from when this task got to run: a client
        # that falls behind must show it in the latency (coordinated omission otherwise).
        due = start + at
        lag = time.perf_counter() - due
        try:
            async with http.post(url, data=BODY, headers=HEADERS) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
                    return
        except (aiohttp.ClientError, TimeoutError):
            errors += 1
            return
        if at >= warmup:
            latencies.append((time.perf_counter() - due) * 1000)
            lags.append(lag * 1000)

    async with session() as http:
        start = time.perf_counter()
        tasks = []
        n = 0
        while (elapsed := time.perf_counter() - start) < seconds:
            due = n / rate
            if due > elapsed:
                await asyncio.sleep(due - elapsed)
            tasks.append(asyncio.ensure_future(one(due)))
            n += 1
        await asyncio.gather(*tasks)
    return {
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "send_lag_p99_ms": pct(lags, 0.99),
        "n": len(latencies),
        "errors": errors,
    }


async def read_stream(
    http: aiohttp.ClientSession, url: str, ttfb: list[float], events: list[float]
) -> bool:
    sent = time.monotonic_ns()
    async with http.get(url, headers={"Authorization": "Bearer local-dummy"}) as r:
        if r.status != 200:
            return False
        first = True
        buffer = b""
        async for chunk in r.content.iter_any():
            now = time.monotonic_ns()
            if first:
                ttfb.append((now - sent) / 1e6)
                first = False
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                payload = event.removeprefix(b"data: ")
                if payload == b"[DONE]":
                    return True
                events.append((now - json.loads(payload)["t"]) / 1e6)
    return False


async def sse(url: str, count: int) -> dict[str, Any]:
    ttfb: list[float] = []
    events: list[float] = []
    async with session() as http:
        for _ in range(count):
            await read_stream(http, url, ttfb, events)
    return {
        "ttfb_p50_ms": pct(ttfb, 0.5),
        "event_p50_ms": pct(events, 0.5),
        "event_p99_ms": pct(events, 0.99),
    }


async def hold(url: str, streams: int, deadline: float) -> dict[str, Any]:
    ttfb: list[float] = []
    events: list[float] = []
    async with session() as http:

        async def one() -> bool:
            try:
                return await read_stream(http, url, ttfb, events)
            except (aiohttp.ClientError, TimeoutError):
                return False

        tasks = [asyncio.ensure_future(one()) for _ in range(streams)]
        done, pending = await asyncio.wait(tasks, timeout=deadline)
        for task in pending:
            task.cancel()
        completed = sum(
            1 for t in done if not t.cancelled() and t.exception() is None and t.result()
        )
    return {
        "completed": completed,
        "streams": streams,
        "event_p99_ms": pct(events, 0.99),
        "ttfb_p99_ms": pct(ttfb, 0.99),
    }


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    kind, url, *rest = sys.argv[1:]
    if kind == "openloop":
        result = asyncio.run(openloop(url, float(rest[0]), float(rest[1])))
    elif kind == "sse":
        result = asyncio.run(sse(url, int(rest[0])))
    else:
        result = asyncio.run(hold(url, int(rest[0]), float(rest[1])))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
