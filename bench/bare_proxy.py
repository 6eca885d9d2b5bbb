"""The required stack with nothing of foundry-proxy on it: the CPU floor under its figure.

uvicorn (httptools, uvloop) serves one raw ASGI endpoint that sends each request on with
aiohttp, with a fixed Authorization header, and streams the answer back. No policy, limits,
admission gate, metrics, access log, token refresh or failover: what the design's packages
cost per request before any of the proxy's own work, measured in the same run as the proxy
(the RSS floor's counterpart, bench/__main__.py's stack_floor).

Run as `python -m bench.bare_proxy PORT UPSTREAM_ORIGIN`; /v1/... goes to UPSTREAM/openai/v1/....
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn
from yarl import URL

# Headers that belong to one connection (RFC 9110 section 7.6.1), plus Host (aiohttp sets it).
_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"host", b"trailer"}
)
_TOKEN = ("Authorization", "Bearer bench-bare-token")


def make_app(upstream: str) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    # The session as foundry-proxy opens it (proxy/upstream_session.py).
                    session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(
                            limit=4096, limit_per_host=0, ttl_dns_cache=60
                        ),
                        cookie_jar=aiohttp.DummyCookieJar(),
                        auto_decompress=False,
                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600),
                    )
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if session is not None:
                        await session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert session is not None
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        headers = [h for h in headers if h[0].lower().encode() not in _HOP]
        query = scope["query_string"].decode("latin-1")
        target = upstream + "/openai" + scope["path"] + ("?" + query if query else "")
        async with session.request(
            scope["method"],
            URL(target, encoded=True),
            headers=[*headers, _TOKEN],
            data=b"".join(chunks) or None,
            allow_redirects=False,
        ) as response:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(k, v) for k, v in response.raw_headers if k.lower() not in _HOP],
                }
            )
            content = response.content
            while True:  # as foundry-proxy relays: the last chunk ends the answer
                chunk = await content.readany()
                done = not chunk or content.is_eof()
                await send({"type": "http.response.body", "body": chunk, "more_body": not done})
                if done:
                    return

    return app


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")
    uvicorn.run(
        make_app(upstream),
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        access_log=False,
        # As foundry-proxy is configured (proxy/server.py's proxy_config).
        proxy_headers=False,
        server_header=False,
        date_header=False,
        log_level="warning",
        backlog=4096,
    )
