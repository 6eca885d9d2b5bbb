"""A forward HTTP proxy for tests: records every request and relays it (plain http only).

Stands in for a corporate egress proxy, to show which traffic goes through
FOUNDRY_PROXY_TOKEN_PROXY and which never does (managed identity endpoints, the upstream).
"""

from __future__ import annotations

import httpx2
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class ForwardProxy:
    def __init__(self) -> None:
        #: (method, "host:port/path") of every request relayed.
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        # A client talking to a proxy sends the absolute URL; the server parses its path and
        # keeps the target in Host.
        target = f"{request.headers['host']}{request.url.path}"
        self.seen.append((request.method, target))
        headers = {k: v for k, v in request.headers.items() if k.lower() != "proxy-connection"}
        async with httpx2.AsyncClient(trust_env=False) as client:
            upstream = await client.request(
                request.method,
                f"http://{target}",
                params=request.query_params,
                content=await request.body(),
                headers=headers,
            )
        drop = {"content-length", "transfer-encoding", "connection", "content-encoding"}
        reply = Response(
            upstream.content,
            upstream.status_code,
            {k: v for k, v in upstream.headers.items() if k.lower() not in drop},
        )
        await reply(scope, receive, send)
