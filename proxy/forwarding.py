"""The forwarding endpoint: a raw ASGI callable streaming admitted requests to the upstream.

This is the hot path. It reads ``receive`` and writes ``send`` itself (no Starlette Request or
StreamingResponse: they measured ~165 us per request here). Admission is the gate's
(admission.py); the forwarder reads the body, takes a slot, attaches the token and makes the
exchange, replaying it once after a token refresh (docs/architecture.md, "A request, step by
step"). With several backends (backends.py) the exchange fails over to the next one on a
429, a 5xx, a connect error or a timeout, while no byte of the answer has reached the client
and the body can be sent again (docs/backends.md).
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

from proxy.admission import Admission
from proxy.backend_health import retry_after
from proxy.backends import Backend, all_cooling_down
from proxy.budget import HELD_KEY
from proxy.downstream import Body, ClientGone, TooLarge, Watch
from proxy.errors import CredentialError
from proxy.exchange import Exchange
from proxy.listener_limits import ANSWERED_KEY
from proxy.replies import ErrorReply, send_error, token_unavailable, too_large, upstream_failure
from proxy.response_relay import answer, token_rejected, unsent
from proxy.rewrite import BadTarget
from proxy.runtime import Runtime
from proxy.usage_tap import UsageTap

log = logging.getLogger("foundry_proxy.forward")


@dataclass(slots=True)
class _Request:
    """One admitted request on its way upstream."""

    tap: UsageTap  # its ``send``, with the Exchange being recorded
    anthropic: bool  # the proxy's own errors in Anthropic's shape
    method: str
    path_qs: str  # appended to the chosen backend's origin (after its deployment mapping)
    path: str  # without the query: what a body's model mapping looks at
    headers: list[tuple[str, str]]
    body: Body
    token_scope: str
    origin: str = ""  # the backend being tried

    async def fail(self, reply: ErrorReply) -> None:
        if reply.upstream:
            self.tap.x.upstream_error = reply.code  # the metrics' label, passed as is
        await send_error(self.tap.send, reply, anthropic=self.anthropic)


class Forwarder:
    """Raw ASGI endpoint: admitted request -> upstream with the bearer token -> streamed back."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._wants_model = runtime.metrics is not None or runtime.access.enabled
        self.in_flight = 0
        # The last token and its Authorization header, which every request sent with that
        # token shares (see _authorization).
        self._bearer: tuple[str, tuple[str, str]] = ("", ("", ""))

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
        tap = UsageTap(x, send, self._rt.metrics, self._wants_model)
        try:
            decision = self._rt.gate.admit(scope, x)
            if isinstance(decision, Admission):
                await self._forward(scope, receive, tap, decision)
            else:
                await send_error(tap.send, decision.reply, anthropic=decision.anthropic)
        finally:
            self.in_flight -= 1
            x.ended = time.perf_counter()
            if not x.status:  # the listener may have answered for us (listener_limits.py)
                x.status = scope.get(ANSWERED_KEY, 0)
            tap.finish()
            if self._rt.metrics is not None:
                self._rt.metrics.observe(x)
            self._rt.access.record(x)

    async def _forward(
        self, scope: Scope, receive: Receive, tap: UsageTap, admitted: Admission
    ) -> None:
        limit = self._rt.settings.max_body_bytes
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
        request = _Request(
            tap,
            admitted.anthropic,
            scope["method"],
            admitted.target.path_qs,
            admitted.target.path,
            admitted.inbound.headers,
            body,
            admitted.token_scope,
        )
        slot = False
        try:
            await body.read_start(receive, self._rt.settings.replay_body_limit)
            if body.data is not None:
                watch.start()
                if not tap.x.deployment:
                    tap.request_body = body.data  # the bytes kept for replay, not a copy
            # The slot is taken once the body (or, for a large one, its replayable start) is
            # in: a client trickling its body holds no slot meanwhile (docs/security.md).
            refused = await self._rt.gate.take_slot()
            if refused is not None:
                await request.fail(refused)
                return
            slot = True
            await self._failover(request, receive, watch)
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
                self._rt.gate.release_slot()
            tap.x.bytes_in = body.size  # Body counts what it read; no wrapper around receive

    async def _failover(self, request: _Request, receive: Receive, watch: Watch) -> None:
        """Try the pool's backends in order (backends.py): the first answer that is not a 429
        or a 5xx goes to the client; on such an answer, a connect error or a timeout, the
        backend cools down and, while the body can be sent again, the next one is tried. The
        last one's answer goes to the client as it is (docs/backends.md)."""
        pool = self._rt.pool
        attempts = pool.attempts()
        backend = next(attempts, None)
        if backend is None:
            await request.fail(all_cooling_down(pool.soonest()))
            return
        x = request.tap.x
        while True:
            x.backend = backend.name
            backend.requests += 1
            try:
                got = await self._attempt(request, backend, receive, watch)
            except BaseException:
                backend.health.abandoned()
                raise
            if got is None:  # answered already (no token, a mapping the path refused)
                backend.health.abandoned()
                return
            health = backend.health
            if isinstance(got, BaseException):
                health.failed(None)
            elif got[0].status == 429:
                health.throttled(retry_after(got[0].headers, time.time()))
            elif got[0].status >= 500:
                health.failed(retry_after(got[0].headers, time.time()))
            else:
                health.succeeded()
                await answer(request.tap.send, *got)
                return
            following = next(attempts, None) if request.body.data is not None else None
            if following is None:
                if isinstance(got, BaseException):
                    await request.fail(upstream_failure(got, request.origin))
                else:
                    await answer(request.tap.send, *got)
                return
            if not isinstance(got, BaseException):
                got[0].close()
            backend.failovers += 1
            log.info(
                "backend %s could not serve the request (%s); trying %s",
                backend.name,
                type(got).__name__ if isinstance(got, BaseException) else got[0].status,
                following.name,
            )
            backend = following

    async def _attempt(
        self, request: _Request, backend: Backend, receive: Receive, watch: Watch
    ) -> tuple[aiohttp.ClientResponse, bytes | None] | aiohttp.ClientError | TimeoutError | None:
        """One backend's answer (its response, and its body when read), or the error that
        kept it from answering; None once the client was answered here. A 401 that says the
        token was refused, for a body that was kept, gets one forced refresh and one replay on
        the same backend."""
        token_scope = request.token_scope
        if backend.spec.scope is not None and token_scope == self._rt.settings.scope:
            token_scope = backend.spec.scope
        token = self._rt.tokens.token_now(token_scope)
        if token is None:
            try:
                token = await self._rt.tokens.token(token_scope)
            except CredentialError as err:
                await request.fail(token_unavailable(err, self._rt.tokens.retry_in(token_scope)))
                return None
        if watch.gone:
            return None
        try:
            path_qs = backend.path_for(request.path_qs)
        except BadTarget as exc:
            await request.fail(ErrorReply(400, "invalid_request", exc.message))
            return None
        # The one place an upstream origin is chosen: a configured backend's (settings).
        request.origin = backend.origin
        url = URL(backend.origin + path_qs, encoded=True)
        body = request.body
        headers = request.headers
        data: bytes | AsyncIterator[bytes] | None
        if body.data is not None:
            data = backend.body_for(request.path, body.data)
            if not data and body.length is None:
                data = None
        else:
            data = body.stream(receive, watch)
            if body.length is not None:
                headers = [*headers, ("Content-Length", str(body.length))]
        try:
            response = await self._send(request, url, headers, data, token)
            if response.status != 401:
                return response, None
            try:
                fresh, read = await self._after_401(request, token_scope, token, response)
            except BaseException:
                response.close()
                raise
            if fresh is None:
                return response, read
            response.close()
            log.info("upstream refused the token; replaying with a fresh one")
            return await self._send(request, url, headers, data, fresh), None
        except (aiohttp.ClientError, TimeoutError) as exc:
            return exc

    async def _send(
        self,
        request: _Request,
        url: URL,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterator[bytes] | None,
        token: str,
    ) -> aiohttp.ClientResponse:
        """The upstream's response; its failure to give one is raised as aiohttp's error, or
        as ClientGone / TooLarge when the client's body was the cause."""
        try:
            return await self._rt.upstream.session.request(
                request.method,
                url,
                headers=[*headers, self._authorization(token)],
                data=data,
                allow_redirects=False,
                skip_auto_headers=unsent(headers),
            )
        except (aiohttp.ClientError, TimeoutError):
            if request.body.gone:
                raise ClientGone from None
            if request.body.too_large:
                raise TooLarge from None
            raise

    def _authorization(self, token: str) -> tuple[str, str]:
        """The Authorization header for ``token``, one copy for all requests that send it.

        aiohttp keeps a request's headers (its request_info) until the response is released,
        so a stream holds its header for as long as it lasts. Entra tokens run to 1.5-2.5 KB:
        a fresh "Bearer ..." string per request cost that much per open stream (issue 17's
        1,000-stream peak), and one more copy of the token in memory each time."""
        if self._bearer[0] != token:
            self._bearer = (token, ("Authorization", "Bearer " + token))
        return self._bearer[1]

    async def _after_401(
        self, request: _Request, token_scope: str, token: str, response: aiohttp.ClientResponse
    ) -> tuple[str | None, bytes | None]:
        """A fresh token to replay with, when the 401 says the token was refused and the body
        was kept; else None and the 401's body if it was read (it goes to the client)."""
        retry, read = await token_rejected(response)
        if retry and request.body.data is not None:
            fresh = await self._rt.tokens.refreshed(token_scope, token)
            if fresh is not None:
                return fresh, None
        elif retry:
            self._rt.tokens.invalidate(token_scope, token)
        return None, read
