"""The forwarding endpoint: a raw ASGI callable streaming admitted requests to the upstream.

This is the hot path. It reads ``receive`` and writes ``send`` itself (no Starlette Request or
StreamingResponse: they measured ~165 us per request here). Admission is the gate's
(admission.py); the forwarder reads the body, takes a slot, attaches the token and makes the
exchange, replaying it once after a token refresh (docs/architecture.md, "A request, step by
step").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from starlette.types import Receive, Scope, Send
from yarl import URL

from proxy.access import AccessLog
from proxy.admission import Admission, Gate
from proxy.budget import HELD_KEY
from proxy.credentials.provider import TokenProvider
from proxy.downstream import Body, ClientGone, TooLarge, Watch
from proxy.errors import CredentialError
from proxy.metrics import Exchange, Metrics
from proxy.replies import ErrorReply, send_error, token_unavailable, too_large, upstream_failure
from proxy.response_relay import answer, token_rejected, unsent
from proxy.settings import Settings
from proxy.upstream_session import UpstreamSession
from proxy.usage_tap import UsageTap

log = logging.getLogger("foundry_proxy.forward")


@dataclass(slots=True)
class _Request:
    """One admitted request on its way upstream."""

    tap: UsageTap  # its ``send``, with the Exchange being recorded
    anthropic: bool  # the proxy's own errors in Anthropic's shape
    origin: str
    method: str
    url: URL
    headers: list[tuple[str, str]]
    body: Body
    token_scope: str

    async def fail(self, reply: ErrorReply) -> None:
        if reply.upstream:
            self.tap.x.upstream_error = reply.code  # the metrics' label, passed as is
        await send_error(self.tap.send, reply, anthropic=self.anthropic)


class Forwarder:
    """Raw ASGI endpoint: admitted request -> upstream with the bearer token -> streamed back."""

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
        self._wants_model = metrics is not None or access.enabled
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        x = Exchange(
            scope["method"],
            scope["raw_path"].decode("ascii", "backslashreplace"),
            "none",
            time.perf_counter(),
        )
        # A plain counter: the in-flight gauge reads it at scrape time (app.py), instead of
        # taking a metric's lock twice per request.
        self.in_flight += 1
        tap = UsageTap(x, send, self._metrics, self._wants_model)
        try:
            decision = self._gate.admit(scope, x)
            if isinstance(decision, Admission):
                await self._forward(scope, receive, tap, decision)
            else:
                await send_error(tap.send, decision.reply, anthropic=decision.anthropic)
        finally:
            self.in_flight -= 1
            x.ended = time.perf_counter()
            tap.finish()
            if self._metrics is not None:
                self._metrics.observe(x)
            self._access.record(x)

    async def _forward(
        self, scope: Scope, receive: Receive, tap: UsageTap, admitted: Admission
    ) -> None:
        limit = self._settings.max_body_bytes
        length = admitted.inbound.length
        if length is not None and length > limit:
            await send_error(tap.send, too_large(limit), anthropic=admitted.anthropic)
            return
        owner = asyncio.current_task()
        assert owner is not None
        watch = Watch(receive, owner)
        # Counted against the body budget by the listener as it arrives (budget.py).
        held = scope.get(HELD_KEY)
        body = Body(length, limit, held)
        # The one place an upstream origin is chosen for a request.
        origin = self._settings.upstream
        request = _Request(
            tap,
            admitted.anthropic,
            origin,
            scope["method"],
            URL(origin + admitted.target.path_qs, encoded=True),
            admitted.inbound.headers,
            body,
            admitted.token_scope,
        )
        slot = False
        try:
            await body.read_start(receive, self._settings.replay_body_limit)
            if body.data is not None:
                watch.start()
                if not tap.x.deployment:
                    tap.request_body = body.data  # the bytes kept for replay, not a copy
            # The slot is taken once the body (or, for a large one, its replayable start) is
            # in: a client trickling its body holds no slot meanwhile (docs/security.md).
            refused = await self._gate.take_slot()
            if refused is not None:
                await request.fail(refused)
                return
            slot = True
            token = self._tokens.token_now(request.token_scope)
            if token is None:
                try:
                    token = await self._tokens.token(request.token_scope)
                except CredentialError as err:
                    retry_in = self._tokens.retry_in(request.token_scope)
                    await request.fail(token_unavailable(err, retry_in))
                    return
            if watch.gone:
                return
            await self._exchange(request, token, receive, watch)
        except ClientGone:
            log.debug("client disconnected during the request body")
        except TooLarge:
            await request.fail(too_large(limit))
        except asyncio.CancelledError:
            if watch.gone and owner.uncancel() == 0:
                log.debug("client disconnected; upstream request closed")
                return
            raise
        finally:
            watch.stop()
            if held is not None:
                held.close()
            if slot:
                self._gate.release_slot()
            tap.x.bytes_in = body.size  # Body counts what it read; no wrapper around receive

    async def _exchange(
        self, request: _Request, token: str, receive: Receive, watch: Watch
    ) -> None:
        """Send the request; a 401 that says the token was refused, for a body that was kept,
        gets one forced refresh and one replay; every other answer goes to the client."""
        body = request.body
        headers = request.headers
        data: bytes | AsyncIterator[bytes] | None
        if body.data is not None:
            data = body.data if body.data or body.length is not None else None
        else:
            data = body.stream(receive, watch)
            if body.length is not None:
                headers = [*headers, ("Content-Length", str(body.length))]
        response = await self._send(request, headers, data, token)
        if response is None:
            return
        fresh: str | None = None
        read: bytes | None = None
        try:
            if response.status == 401:
                fresh, read = await self._after_401(request, token, response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            response.close()
            await request.fail(upstream_failure(exc, request.origin))
            return
        except BaseException:
            response.close()
            raise
        if fresh is None:
            await answer(request.tap.send, response, read)
            return
        response.close()
        log.info("upstream refused the token; replaying with a fresh one")
        replayed = await self._send(request, headers, data, fresh)
        if replayed is not None:
            await answer(request.tap.send, replayed, None)

    async def _send(
        self,
        request: _Request,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterator[bytes] | None,
        token: str,
    ) -> aiohttp.ClientResponse | None:
        """The upstream's response, or None once a failure to get one was answered."""
        try:
            return await self._upstream.session.request(
                request.method,
                request.url,
                headers=[*headers, ("Authorization", "Bearer " + token)],
                data=data,
                allow_redirects=False,
                skip_auto_headers=unsent(headers),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            if request.body.gone:
                raise ClientGone from None
            if request.body.too_large:
                raise TooLarge from None
            await request.fail(upstream_failure(exc, request.origin))
            return None

    async def _after_401(
        self, request: _Request, token: str, response: aiohttp.ClientResponse
    ) -> tuple[str | None, bytes | None]:
        """A fresh token to replay with, when the 401 says the token was refused and the body
        was kept; else None and the 401's body if it was read (it goes to the client)."""
        retry, read = await token_rejected(response)
        if retry and request.body.data is not None:
            fresh = await self._tokens.refreshed(request.token_scope, token)
            if fresh is not None:
                return fresh, None
        elif retry:
            self._tokens.invalidate(request.token_scope, token)
        return None, read
