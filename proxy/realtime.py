"""The Realtime API over WebSocket: the same admission and the same token as HTTP requests.

The client's handshake goes through the gate like any request (admission.py: route, Host and
Origin, inbound keys, request id, policy, then a concurrency slot held for as long as the
session lasts); a refusal is the handshake's denial with the status, code, message and headers
an HTTP request would get. The upstream handshake is made by aiohttp, on the shared upstream
pool, with the provider's bearer token and none of the client's credentials (docs/azure.md,
section 6, Realtime); it never follows a redirect (docs/security.md): a 3xx is a 502. Frames
then pass both ways (realtime_frames.py). The token is checked only at the handshake, so a
session outlives it; new sessions take the current one.
"""

from __future__ import annotations

import time

import aiohttp
from starlette.types import Receive, Scope, Send
from yarl import URL

from proxy.access import AccessLog
from proxy.admission import Admission, Gate
from proxy.credentials.provider import TokenProvider
from proxy.errors import CredentialError
from proxy.metrics import Exchange, Metrics
from proxy.realtime_frames import pump
from proxy.replies import ErrorReply, token_unavailable
from proxy.settings import Settings
from proxy.upstream_session import UpstreamSession

# Handshake headers worth passing on (the rest are the client's own: its key, its WebSocket
# key and extensions, which aiohttp makes afresh for the upstream handshake).
_RELAYED = frozenset({"openai-beta", "user-agent", "x-ms-client-request-id", "openai-project"})


class RealtimeRelay:
    def __init__(
        self,
        settings: Settings,
        gate: Gate,
        upstream: UpstreamSession,
        tokens: TokenProvider,
        metrics: Metrics | None,
        access: AccessLog,
    ) -> None:
        self._settings = settings
        self._gate = gate
        self._upstream = upstream
        self._tokens = tokens
        self._metrics = metrics
        self._access = access

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
            if self._metrics is not None:
                self._metrics.observe(x)
            self._access.record(x)

    async def _session(self, scope: Scope, receive: Receive, send: Send, x: Exchange) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        decision = self._gate.admit(scope, x)
        x.route = "realtime"  # whatever route family the gate found: counted as sessions
        if not isinstance(decision, Admission):
            await _deny(scope, send, x, decision.reply, decision.anthropic)
            return
        refused = await self._gate.take_slot()
        if refused is not None:
            await _deny(scope, send, x, refused, decision.anthropic)
            return
        try:
            await self._upstream_session(scope, receive, send, x, decision)
        finally:
            self._gate.release_slot()

    async def _upstream_session(
        self, scope: Scope, receive: Receive, send: Send, x: Exchange, admitted: Admission
    ) -> None:
        token_scope = admitted.token_scope
        try:
            token = await self._tokens.token(token_scope)
        except CredentialError as err:
            reply = token_unavailable(err, self._tokens.retry_in(token_scope))
            await _deny(scope, send, x, reply, admitted.anthropic)
            return
        inbound = admitted.inbound
        headers = {name: value for name, value in inbound.headers if name.lower() in _RELAYED}
        headers["Authorization"] = f"Bearer {token}"
        # The one place an upstream origin is chosen for a session.
        url = URL(self._settings.upstream + admitted.target.path_qs, encoded=True)
        protocols = [
            p.strip()
            for name, value in scope["headers"]
            if name == b"sec-websocket-protocol"
            for p in value.decode("latin-1").split(",")
            # OpenAI's browser convention carries the key in a subprotocol: never passed on.
            if p.strip() and not p.strip().lower().startswith("openai-insecure-api-key")
        ]
        try:
            upstream = await self._upstream.handshakes().ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                # aiohttp refuses a message of exactly max_msg_size; the limit is inclusive.
                max_msg_size=self._settings.ws_max_message_bytes + 1,
                autoclose=False,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            # The upstream's refusal, relayed: 401 (token), 403, 404 (deployment), 429. A 5xx,
            # a redirect (never followed) or anything odd is the upstream failing: 502, as for
            # HTTP requests.
            status = exc.status if 400 <= exc.status < 500 else 502
            message = f"the upstream refused the Realtime session (HTTP {exc.status})"
            await _deny(
                scope, send, x, ErrorReply(status, "upstream_refused", message), admitted.anthropic
            )
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            x.upstream_error = "upstream_unreachable"
            message = f"could not open the Realtime session upstream ({type(exc).__name__})"
            await _deny(
                scope,
                send,
                x,
                ErrorReply(502, "upstream_unreachable", message),
                admitted.anthropic,
            )
            return
        x.status = 101
        x.first_byte = time.perf_counter()
        try:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol})
            await pump(receive, send, upstream, x, self._settings.send_timeout)
        finally:
            if not upstream.closed:
                await upstream.close()


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
