"""The Realtime API over WebSocket: the same checks and the same token as HTTP requests.

The client's handshake is judged like any request (route, policy, Host and Origin, inbound
keys); the upstream handshake is made by aiohttp, on the forwarder's session, with the
provider's bearer token and none of the client's credentials (docs/azure.md, section 6,
Realtime). Frames then pass both ways as they are, text as text and binary as binary; close
codes and reasons pass too, and either side closing closes the other. The token is checked
only at the handshake, so a session outlives it; new sessions take the current one.

A session takes one of the max_concurrency slots that requests take, for as long as it lasts.
The upstream handshake never follows a redirect (docs/security.md): a 3xx is a 502.

Backpressure: each direction reads its next message only after the previous one was handed
on, so a slow reader stalls its writer over TCP instead of growing a buffer here (the listener,
websocket_listener.py, reads a client's next message only when asked, within the buffer
budget). A peer that takes nothing of a message for FOUNDRY_PROXY_SEND_TIMEOUT seconds ends the
session: an upstream that stopped reading closes the client's side with 1011; a client that
stopped reading is cut off by the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from types import MappingProxyType
from typing import TYPE_CHECKING

import aiohttp
from starlette.types import Receive, Scope, Send
from yarl import URL

from proxy.errors import CredentialError
from proxy.forwarding import Forwarder, route_of
from proxy.metrics import Exchange
from proxy.rewrite import BadTarget, Inbound, Target, map_target, request_headers

if TYPE_CHECKING:
    from aiohttp.client_middlewares import ClientHandlerType

log = logging.getLogger("foundry_proxy.realtime")

# Handshake headers worth passing on (the rest are the client's own: its key, its WebSocket
# key and extensions, which aiohttp makes afresh for the upstream handshake).
_RELAYED = frozenset({"openai-beta", "user-agent", "x-ms-client-request-id", "openai-project"})
# Close codes that may not be sent in a close frame (RFC 6455 section 7.4.1): what a peer
# that vanished "sent" is reported onwards as an internal error, a missing code as normal.
_UNSENDABLE = MappingProxyType({1005: 1000, 1006: 1011, 1015: 1011})
# A message this small written to an upstream socket with nothing buffered goes out at once;
# larger ones, or any behind others, are watched for progress.
_SMALL = 64 * 1024


class Stalled(Exception):
    """The upstream took nothing of a message for the send deadline."""


async def _no_redirects(
    request: aiohttp.ClientRequest, handler: ClientHandlerType
) -> aiohttp.ClientResponse:
    """Refuse a redirected handshake: ws_connect has no allow_redirects and aiohttp follows
    up to ten, which repeated the handshake, bearer token included, wherever they led."""
    response = await handler(request)
    if 300 <= response.status < 400:
        response.close()
        raise aiohttp.WSServerHandshakeError(
            response.request_info,
            (),
            status=response.status,
            message="redirect refused",
            headers=response.headers,
        )
    return response


class RealtimeRelay:
    def __init__(
        self, forwarder: Forwarder, max_message_bytes: int, send_timeout: float = 30.0
    ) -> None:
        self._fwd = forwarder
        self._max = max_message_bytes
        self._send_timeout = send_timeout
        self._handshakes: aiohttp.ClientSession | None = None

    def _session_for_handshakes(self) -> aiohttp.ClientSession:
        """The forwarder's connection pool and settings, with redirects refused."""
        if self._handshakes is None:
            pool = self._fwd.session
            self._handshakes = aiohttp.ClientSession(
                connector=pool.connector,
                connector_owner=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                timeout=pool.timeout,
                trust_env=pool.trust_env,
                middlewares=(_no_redirects,),
            )
        return self._handshakes

    async def aclose(self) -> None:
        """At shutdown, before the forwarder closes the pool."""
        if self._handshakes is not None:
            await self._handshakes.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cfg = self._fwd.config
        x = Exchange(
            "GET",
            scope["raw_path"].decode("ascii", "backslashreplace"),
            "realtime",
            time.perf_counter(),
        )
        x.streamed = True
        try:
            await self._session(scope, receive, send, x)
        finally:
            x.ended = time.perf_counter()
            if cfg.metrics is not None:
                cfg.metrics.observe(x)
            cfg.access.record(x)

    async def _session(self, scope: Scope, receive: Receive, send: Send, x: Exchange) -> None:
        fwd, cfg = self._fwd, self._fwd.config
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            target = map_target(scope["raw_path"], scope["query_string"])
            inbound = request_headers(scope["headers"])
        except BadTarget as exc:
            await _deny(scope, send, x, exc.status, "invalid_request", exc.message)
            return
        x.route = "realtime"
        x.deployment = route_of(target.path)[1]
        refusal = fwd.refusal(inbound, scope)
        if refusal is not None:
            await _deny(scope, send, x, 403, *refusal)
            return
        if cfg.keys and not fwd.key_ok(inbound.presented):
            await _deny(scope, send, x, 401, "invalid_api_key", "an inbound key is required")
            return
        if cfg.policy.decide("GET", target.path) != 200:
            await _deny(
                scope,
                send,
                x,
                403,
                "operation_not_allowed",
                f"GET {target.path} is not an operation foundry-proxy forwards",
            )
            return
        if not await fwd.hold_slot():
            await _deny(
                scope,
                send,
                x,
                503,
                "upstream_pool_exhausted",
                f"foundry-proxy is at its limit of {cfg.max_concurrency} requests and Realtime "
                "sessions (FOUNDRY_PROXY_MAX_CONCURRENCY); retry shortly",
                ((b"retry-after", b"1"),),
            )
            return
        try:
            await self._upstream_session(scope, receive, send, x, target, inbound)
        finally:
            fwd.release_slot()

    async def _upstream_session(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        x: Exchange,
        target: Target,
        inbound: Inbound,
    ) -> None:
        fwd, cfg = self._fwd, self._fwd.config
        scope_name = cfg.projects_scope if target.projects else cfg.scope
        try:
            token = await fwd.tokens.token(scope_name)
        except CredentialError as err:
            await _deny(
                scope,
                send,
                x,
                503,
                "token_unavailable",
                f"foundry-proxy has no Entra ID token: {err.code}: {err.message}",
            )
            return
        headers = {name: value for name, value in inbound.headers if name.lower() in _RELAYED}
        headers["Authorization"] = f"Bearer {token}"
        x.client_request_id = headers.get("x-ms-client-request-id", "")
        url = URL(cfg.origin + target.path_qs, encoded=True)
        protocols = [
            p.strip()
            for name, value in scope["headers"]
            if name == b"sec-websocket-protocol"
            for p in value.decode("latin-1").split(",")
            # OpenAI's browser convention carries the key in a subprotocol: never passed on.
            if p.strip() and not p.strip().lower().startswith("openai-insecure-api-key")
        ]
        try:
            upstream = await self._session_for_handshakes().ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                # aiohttp refuses a message of exactly max_msg_size; the limit is inclusive.
                max_msg_size=self._max + 1,
                autoclose=False,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            # The upstream's refusal, relayed: 401 (token), 403, 404 (deployment), 429. A 5xx,
            # a redirect (never followed) or anything odd is the upstream failing: 502, as for
            # HTTP requests.
            status = exc.status if 400 <= exc.status < 500 else 502
            await _deny(
                scope,
                send,
                x,
                status,
                "upstream_refused",
                f"the upstream refused the Realtime session (HTTP {exc.status})",
            )
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            x.upstream_error = "upstream_unreachable"
            await _deny(
                scope,
                send,
                x,
                502,
                "upstream_unreachable",
                f"could not open the Realtime session upstream ({type(exc).__name__})",
            )
            return
        x.status = 101
        x.first_byte = time.perf_counter()
        try:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol})
            await self._pump(receive, send, upstream, x)
        finally:
            if not upstream.closed:
                await upstream.close()

    async def _pump(
        self, receive: Receive, send: Send, upstream: aiohttp.ClientWebSocketResponse, x: Exchange
    ) -> None:
        async def from_client() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    x.frames_in += 1
                    data: str | bytes = (
                        message["text"]
                        if message.get("text") is not None
                        else message.get("bytes") or b""
                    )
                    x.bytes_in += len(data)
                    del message  # held by the write below only, until it is done
                    await self._to_upstream(upstream, data)
                    del data  # not held while the next message is awaited
                elif message["type"] == "websocket.disconnect":
                    sent = int(message.get("code") or 1000)
                    code = _UNSENDABLE.get(sent, sent)
                    x.close_code = code
                    reason = (message.get("reason") or "").encode()
                    await upstream.close(code=code, message=reason)
                    return

        async def from_upstream() -> None:
            while True:
                message = await upstream.receive()
                kind = message.type
                if kind in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    x.frames_out += 1
                    x.bytes_out += len(message.data)
                    field = "text" if kind == aiohttp.WSMsgType.TEXT else "bytes"
                    # The listener cuts off a client that takes nothing for the send
                    # deadline (send() then raises); this one covers other servers.
                    async with asyncio.timeout(2 * self._send_timeout):
                        await send({"type": "websocket.send", field: message.data})
                elif kind in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                    continue
                elif kind in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    # Our own close (the client left, from_client is closing the upstream):
                    # aiohttp wakes this reader to say so; nothing is left to relay.
                    return
                else:
                    code, reason = _close_of(message, upstream)
                    x.close_code = code
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        await upstream.close(code=code)
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    return

        tasks = [asyncio.ensure_future(from_client()), asyncio.ensure_future(from_upstream())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            error = task.exception()
            if isinstance(error, Stalled):
                await self._upstream_stalled(send, upstream, x)
            elif isinstance(error, TimeoutError):
                log.warning(
                    "realtime: the client read nothing for %g s; session ended",
                    2 * self._send_timeout,
                )
                x.close_code = 1001
            elif error is not None and not isinstance(error, OSError | aiohttp.ClientError):
                log.warning("realtime session ended by %s", type(error).__name__)

    async def _to_upstream(
        self, upstream: aiohttp.ClientWebSocketResponse, data: str | bytes
    ) -> None:
        """Write one message upstream; raise Stalled when the upstream's socket takes nothing
        of it for the send deadline."""
        transport = _transport_of(upstream)
        write = upstream.send_str(data) if isinstance(data, str) else upstream.send_bytes(data)
        if transport is None or (len(data) <= _SMALL and not transport.get_write_buffer_size()):
            try:
                async with asyncio.timeout(self._send_timeout):
                    await write
            except TimeoutError:
                raise Stalled from None
            return
        # aiohttp waits for the socket to drain without a deadline; its wait is watched here
        # rather than cancelled, so the connection stays usable while the upstream is slow
        # but still taking bytes.
        task = asyncio.ensure_future(write)
        try:
            await asyncio.sleep(0)  # the write itself: the message is in the socket's buffer
            left = transport.get_write_buffer_size()
            while True:
                done, _ = await asyncio.wait((task,), timeout=self._send_timeout)
                if done:
                    task.result()
                    return
                now = transport.get_write_buffer_size()
                if now >= left:
                    raise Stalled
                left = now
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _upstream_stalled(
        self, send: Send, upstream: aiohttp.ClientWebSocketResponse, x: Exchange
    ) -> None:
        log.warning(
            "realtime: the upstream took nothing of a message for %g s; session closed with "
            "1011 (FOUNDRY_PROXY_SEND_TIMEOUT)",
            self._send_timeout,
        )
        x.upstream_error = "upstream_stalled"
        x.close_code = 1011
        # Its close frame would queue behind what the upstream does not read, and a graceful
        # close waits for that buffer to drain: drop the connection instead.
        transport = _transport_of(upstream)
        if transport is not None:
            transport.abort()
        with contextlib.suppress(OSError):
            await send({"type": "websocket.close", "code": 1011, "reason": "upstream stalled"})


def _transport_of(upstream: aiohttp.ClientWebSocketResponse) -> asyncio.WriteTransport | None:
    """The upstream connection's transport, to see how much it has yet to send and to drop
    it; aiohttp offers no public handle on it, its WebSocket writer holds it."""
    transport = getattr(getattr(upstream, "_writer", None), "transport", None)
    if hasattr(transport, "get_write_buffer_size") and hasattr(transport, "abort"):
        return transport
    return None


def _close_of(
    message: aiohttp.WSMessage, upstream: aiohttp.ClientWebSocketResponse
) -> tuple[int, str]:
    """The close code and reason to pass on for how the upstream side ended."""
    if message.type == aiohttp.WSMsgType.CLOSE:
        code = int(message.data or 1000)
        return _UNSENDABLE.get(code, code), str(message.extra or "")
    if message.type == aiohttp.WSMsgType.ERROR:
        # aiohttp reports a message over max_msg_size as an error with code 1009.
        error = message.data
        code = getattr(error, "code", 1011) if error is not None else 1011
        return (code if code == 1009 else 1011), "upstream error"
    code = upstream.close_code or 1006
    return _UNSENDABLE.get(code, code), ""


async def _deny(
    scope: Scope,
    send: Send,
    x: Exchange,
    status: int,
    code: str,
    message: str,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Refuse the handshake: an HTTP answer where the server supports it, else a close."""
    x.status = status
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps(
            {"error": {"message": message, "type": "proxy_error", "code": code, "param": None}}
        ).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-foundry-proxy-error", code.encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": code})
