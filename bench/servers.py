"""Servers the benchmark starts besides nginx: the delayed-SSE upstream and the Entra emulator.

Run as `python -m bench.servers slow PORT` or `python -m bench.servers entra PORT`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web

TENANT = "bench.onmicrosoft.com"
CLIENT_ID = "6b1f0a2c-0000-4000-8000-00000000be1c"
SECRET = "bench-secret-value"  # noqa: S105 - a loopback-only emulator's secret


async def slow(request: web.Request) -> web.StreamResponse:
    """N events D ms apart; each carries its CLOCK_MONOTONIC send time (ns), which every
    process on this machine shares, so clients can measure per-event latency."""
    count = int(request.query.get("n", "20"))
    delay = int(request.query.get("delay_ms", "10")) / 1000
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    pad = "x" * 120
    for index in range(count):
        if index:
            await asyncio.sleep(delay)
        event = {"i": index, "t": time.monotonic_ns(), "pad": pad}
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def serve_slow(port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/openai/v1/slow", slow)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


def serve_entra(port: int) -> None:
    import uvicorn

    from proxy.emulator.entra import EmulatedEntra
    from proxy.emulator.tokens import TokenIssuer

    entra = EmulatedEntra(TokenIssuer(), tenant=TENANT, client_id=CLIENT_ID, secret=SECRET)
    uvicorn.run(entra.app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    serve_slow(port) if kind == "slow" else serve_entra(port)
