"""The Realtime API over WebSocket: the same admission and the same token as HTTP requests.

The client's handshake goes through the gate like any request (admission.py: route, Host and
Origin, inbound keys, request id, policy, then a concurrency slot held for as long as the
session lasts); a refusal is the handshake's denial with the status, code, message and headers
an HTTP request would get. The upstream handshake is made by aiohttp, on the shared upstream
pool, with the provider's bearer token and none of the client's credentials (docs/azure.md,
section 6, Realtime); it never follows a redirect (docs/security.md): a 3xx is a 502. A 429
or 503 refusal reaches the client with its status and the headers that say when to come back
(Retry-After, retry-after-ms, x-ratelimit-*), as an HTTP request's answer would. Frames then
pass both ways (realtime_frames.py). The token is checked only at the handshake, so a
session outlives it; new sessions take the current one. With several backends the session
chooses one at the handshake and fails over (on a 429, a 5xx, a connect error or a timeout)
only while the handshake has not completed; an open session stays where it is
(docs/backends.md).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import aiohttp
from starlette.types import Receive, Scope, Send
from yarl import URL

from proxy.admission import Admission
from proxy.backend_health import retry_after
from proxy.backends import Backend, all_cooling_down
from proxy.errors import CredentialError
from proxy.exchange import Exchange
from proxy.realtime_frames import pump
from proxy.replies import ErrorReply, Headers, token_unavailable
from proxy.rewrite import BadTarget
from proxy.runtime import Runtime

# Handshake headers worth passing on (the rest are the client's own: its key, its WebSocket
# key and extensions, which aiohttp makes afresh for the upstream handshake).
_RELAYED = frozenset({"openai-beta", "user-agent", "x-ms-client-request-id", "openai-project"})
# What a throttled or overloaded upstream says about when to come back (RFC 9110 section
# 10.2.3; Azure OpenAI adds retry-after-ms and the x-ratelimit-* family). The openai SDKs and
# callers' own retry loops read them from a denied handshake as from any 429.
_THROTTLE_NAMES = frozenset({"retry-after", "retry-after-ms", "x-ms-retry-after-ms"})
_THROTTLE_PREFIX = "x-ratelimit-"
_THROTTLE_STATUSES = frozenset({429, 503})
# Bounds on what is copied from an upstream's denial: these headers are short numbers and
# durations, a handful of them.
_MAX_THROTTLE_HEADERS = 16
_MAX_THROTTLE_VALUE = 128


class RealtimeRelay:
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            if self._rt.metrics is not None:
                self._rt.metrics.observe(x)
            self._rt.access.record(x)

    async def _session(self, scope: Scope, receive: Receive, send: Send, x: Exchange) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        decision = self._rt.gate.admit(scope, x)
        x.route = "realtime"  # whatever route family the gate found: counted as sessions
        if not isinstance(decision, Admission):
            await _deny(scope, send, x, decision.reply, decision.anthropic)
            return
        refused = await self._rt.gate.take_slot()
        if refused is not None:
            await _deny(scope, send, x, refused, decision.anthropic)
            return
        try:
            await self._upstream_session(scope, receive, send, x, decision)
        finally:
            self._rt.gate.release_slot()

    async def _upstream_session(
        self, scope: Scope, receive: Receive, send: Send, x: Exchange, admitted: Admission
    ) -> None:
        protocols = [
            p.strip()
            for name, value in scope["headers"]
            if name == b"sec-websocket-protocol"
            for p in value.decode("latin-1").split(",")
            # OpenAI's browser convention carries the key in a subprotocol: never passed on.
            if p.strip() and not p.strip().lower().startswith("openai-insecure-api-key")
        ]
        attempts = self._rt.pool.attempts()
        backend = next(attempts, None)
        if backend is None:
            reply = all_cooling_down(self._rt.pool.soonest())
            await _deny(scope, send, x, reply, admitted.anthropic)
            return
        while True:
            x.backend = backend.name
            backend.requests += 1
            try:
                outcome = await self._handshake(backend, admitted, protocols)
            except BaseException:
                backend.health.abandoned()
                raise
            if isinstance(outcome, aiohttp.ClientWebSocketResponse):
                backend.health.succeeded()
                break
            reply, retriable = outcome
            following = next(attempts, None) if retriable else None
            if following is None:
                if reply.upstream:
                    x.upstream_error = reply.code
                await _deny(scope, send, x, reply, admitted.anthropic)
                return
            backend.failovers += 1
            backend = following
        upstream = outcome
        x.status = 101
        x.first_byte = time.perf_counter()
        try:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol})
            await pump(receive, send, upstream, x, self._rt.settings.send_timeout)
        finally:
            if not upstream.closed:
                await upstream.close()

    async def _handshake(
        self, backend: Backend, admitted: Admission, protocols: Sequence[str]
    ) -> aiohttp.ClientWebSocketResponse | tuple[ErrorReply, bool]:
        """The upstream session on ``backend``, or the refusal to answer with and whether
        another backend may be tried (a 429, a 5xx, no connection). The backend's health is
        told what it did, except on success (the caller's)."""
        token_scope = admitted.token_scope
        if backend.spec.scope is not None and token_scope == self._rt.settings.scope:
            token_scope = backend.spec.scope
        try:
            token = await self._rt.tokens.token(token_scope)
        except CredentialError as err:
            backend.health.abandoned()
            return token_unavailable(err, self._rt.tokens.retry_in(token_scope)), False
        try:
            path_qs = backend.path_for(admitted.target.path_qs)
        except BadTarget as exc:
            backend.health.abandoned()
            return ErrorReply(400, "invalid_request", exc.message), False
        inbound = admitted.inbound
        headers = {name: value for name, value in inbound.headers if name.lower() in _RELAYED}
        headers["Authorization"] = f"Bearer {token}"
        # The one place an upstream origin is chosen for a session: a configured backend's.
        url = URL(backend.origin + path_qs, encoded=True)
        try:
            return await self._rt.upstream.handshakes().ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                # aiohttp refuses a message of exactly max_msg_size; the limit is inclusive.
                max_msg_size=self._rt.settings.ws_max_message_bytes + 1,
                autoclose=False,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            # The upstream's refusal, relayed: 401 (token), 403, 404 (deployment), 429, and a
            # 503 with when to retry. Another 5xx, a redirect (never followed) or anything odd
            # is the upstream failing: 502.
            wait = retry_after(exc.headers, time.time()) if exc.headers else None
            if exc.status == 429:
                backend.health.throttled(wait)
            elif exc.status >= 500:
                backend.health.failed(wait)
            else:
                backend.health.succeeded()
            throttled = exc.status in _THROTTLE_STATUSES
            status = exc.status if 400 <= exc.status < 500 or throttled else 502
            retry = throttle_headers(exc.headers) if throttled and exc.headers else ()
            message = f"the upstream refused the Realtime session (HTTP {exc.status})"
            retriable = exc.status == 429 or exc.status >= 500
            return ErrorReply(status, "upstream_refused", message, retry), retriable
        except (aiohttp.ClientError, TimeoutError) as exc:
            backend.health.failed(None)
            message = f"could not open the Realtime session upstream ({type(exc).__name__})"
            return ErrorReply(502, "upstream_unreachable", message, upstream=True), True


def throttle_headers(headers: Mapping[str, str]) -> Headers:
    """The headers of an upstream's 429 or 503 that tell when to retry, names lower-cased;
    a value that is not short printable ASCII is left out."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers.items():
        lower = name.lower()
        if not lower.isascii() or not (
            lower in _THROTTLE_NAMES or lower.startswith(_THROTTLE_PREFIX)
        ):
            continue
        if len(value) > _MAX_THROTTLE_VALUE or not (value.isascii() and value.isprintable()):
            continue
        out.append((lower.encode("ascii"), value.encode("ascii")))
        if len(out) == _MAX_THROTTLE_HEADERS:
            break
    return tuple(out)


async def _deny(scope: Scope, send: Send, x: Exchange, reply: ErrorReply, anthropic: bool) -> None:
    """Refuse the handshake: the HTTP answer a request would get, where the server supports
    it (the ASGI WebSocket denial response extension), else a close with the proxy's code."""
    x.status = reply.status
    if "websocket.http.response" in scope.get("extensions", {}):
        body = reply.body(anthropic=anthropic)
        await send(
            {
                "type": "websocket.http.response.start",
                "status": reply.status,
                "headers": reply.head(body),
            }
        )
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": reply.code})
