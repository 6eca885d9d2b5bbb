"""The forwarding endpoint: a raw ASGI callable streaming requests to the upstream over aiohttp.

This is the hot path. It reads ``receive`` and writes ``send`` itself (no Starlette Request or
StreamingResponse: they measured ~165 us per request here) and keeps one long-lived
aiohttp session to the upstream. Bodies stream both ways and are never decoded or re-framed, so
SSE events reach the client as the upstream writes them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
import secrets
import ssl
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from proxy.access import AccessLog
from proxy.addresses import host_of_authority, is_loopback_host
from proxy.budget import HELD_KEY
from proxy.credentials.provider import TokenProvider
from proxy.downstream import Body, ClientGone, TooLarge, Watch
from proxy.errors import CredentialError
from proxy.metrics import Exchange, Metrics
from proxy.policy import Policy
from proxy.replies import (
    anthropic_call,
    anthropic_elsewhere,
    send_error,
    token_unavailable,
    too_large,
    upstream_failed,
)
from proxy.rewrite import (
    BadTarget,
    Inbound,
    Target,
    map_target,
    request_headers,
    response_headers,
)
from proxy.upstream_refusals import Refusal, classify_401
from proxy.usage import (
    JSON_HEAD,
    JSON_TAIL,
    STREAM_HEAD,
    STREAM_TAIL,
    from_anthropic_stream,
    from_json,
    from_stream_tail,
    model_of_request,
)

log = logging.getLogger("foundry_proxy.forward")

# A 401 body worth inspecting is small JSON; never buffer more than this to look at it.
_INSPECT_LIMIT = 64 * 1024
_CLOSE = ((b"connection", b"close"),)
_KEY_MESSAGE = (
    "foundry-proxy requires an inbound key: send it as Authorization: Bearer <key> (the api_key "
    "of OpenAI SDKs), as an api-key header or as an x-api-key header (the api_key of Anthropic "
    "SDKs)"
)
_KEY_CHALLENGE = ((b"www-authenticate", b'Bearer realm="foundry-proxy"'),)


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    origin: str
    scope: str
    projects_scope: str
    connect_timeout: float
    read_timeout: float
    pool_size: int
    replay_body_limit: int
    max_body_bytes: int
    trust_env: bool
    loopback_only: bool  # listening on loopback only: Host must name loopback too
    allowed_origins: frozenset[str]
    policy: Policy
    keys: tuple[bytes, ...]  # inbound keys; empty: none required
    max_concurrency: int
    queue_timeout: float
    metrics: Metrics | None
    access: AccessLog


@dataclass(slots=True)
class _Request:
    method: str
    url: URL
    headers: list[tuple[str, str]]
    body: Body
    token: str
    token_scope: str


class Forwarder:
    """Raw ASGI endpoint: validated path -> upstream with the bearer token -> streamed back."""

    def __init__(self, config: UpstreamConfig, tokens: TokenProvider, tls: ssl.SSLContext) -> None:
        self._config = config
        self._tokens = tokens
        self._tls = tls
        self._origin = config.origin
        self._session: aiohttp.ClientSession | None = None
        # Host values already found to be loopback: parsing an address costs microseconds on
        # every request, and callers use one or two Host values. Bounded, so no one can grow it.
        self._loopback_hosts: set[str] = set()
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self.in_flight = 0
        self._ids = random.Random(secrets.randbits(64))  # noqa: S311 - ids, not secrets

    async def start(self) -> None:
        cfg = self._config
        connector = aiohttp.TCPConnector(
            limit=cfg.pool_size, limit_per_host=0, ttl_dns_cache=60, ssl=self._tls
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Cookies from one caller's response must never ride on another caller's request.
            cookie_jar=aiohttp.DummyCookieJar(),
            # Bytes pass through as sent; Content-Encoding and Content-Length stay true.
            auto_decompress=False,
            # sock_read bounds the gap between reads, so a slow first token is fine as long as
            # it arrives within read_timeout (the OpenAI SDKs default to 600 s).
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.read_timeout
            ),
            # Corporate proxies are opt-in: HTTPS_PROXY must not silently receive the token.
            trust_env=cfg.trust_env,
            # No session-wide skip_auto_headers: it costs ~6 % of a request's CPU (aiohttp
            # rebuilds it per request). Accept-Encoding is always set by request_headers; the
            # headers aiohttp would invent are skipped per request, only when missing (_unsent).
        )

    @property
    def config(self) -> UpstreamConfig:
        return self._config

    @property
    def tokens(self) -> TokenProvider:
        return self._tokens

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Forwarder.start() was not awaited"
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cfg = self._config
        x = Exchange(
            scope["method"],
            scope["raw_path"].decode("ascii", "backslashreplace"),
            "none",
            time.perf_counter(),
        )
        # A plain counter: the in-flight gauge reads it at scrape time (app.py), instead of
        # taking a metric's lock twice per request.
        self.in_flight += 1
        tap = _Tap(x, send, cfg.metrics, cfg.metrics is not None or cfg.access.enabled)
        try:
            await self._handle(scope, receive, tap, x)
        finally:
            self.in_flight -= 1
            x.ended = time.perf_counter()
            tap.finish()
            if cfg.metrics is not None:
                cfg.metrics.observe(x)
            cfg.access.record(x)

    async def _handle(self, scope: Scope, receive: Receive, tap: _Tap, x: Exchange) -> None:
        send = tap.send
        try:
            target = map_target(scope["raw_path"], scope["query_string"])
        except BadTarget as exc:
            if exc.status == 404:
                await self._not_found(
                    send, scope["method"], x.path, _host_of(scope["headers"]), exc.message
                )
            else:
                await send_error(send, exc.status, "invalid_request", exc.message)
            return
        try:
            if scope["http_version"] not in ("1.1", "1.0"):
                raise BadTarget(400, "only HTTP/1.1 and HTTP/1.0 requests are accepted")
            inbound = request_headers(scope["headers"])
        except BadTarget as exc:
            # Framing the proxy cannot trust: answer and close, so nothing that followed on
            # this connection is read as another request.
            await send_error(send, exc.status, "invalid_request", exc.message, _CLOSE)
            return
        refusal = self.refusal(inbound, scope)
        if refusal is not None:
            await send_error(send, 403, *refusal)
            return
        if self._config.keys and not self.key_ok(inbound.presented):
            await send_error(send, 401, "invalid_api_key", _KEY_MESSAGE, _KEY_CHALLENGE)
            return
        x.route, x.deployment = route_of(target.path)
        if not inbound.client_request_id:
            # Sent upstream and logged, so one id ties a line of ours to Azure's records.
            inbound.client_request_id = self._request_id()
            inbound.headers.append(("x-ms-client-request-id", inbound.client_request_id))
        x.client_request_id = inbound.client_request_id
        verdict = self._config.policy.decide(scope["method"], target.path)
        if verdict != 200:
            if verdict == 404:
                await self._not_found(send, scope["method"], x.path, inbound.host or "")
            else:
                await self._refuse_operation(send, verdict, scope["method"], target.path)
            return
        await self._forward(scope, receive, tap, target, inbound, x)

    async def _take_slot(self, send: Send) -> bool:
        """One of max_concurrency slots, waiting up to queue_timeout; else answer 503."""
        if not self._slots.locked():
            await self._slots.acquire()
            return True
        try:
            async with asyncio.timeout(self._config.queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            await send_error(
                send,
                503,
                "upstream_pool_exhausted",
                f"foundry-proxy is at its limit of {self._config.max_concurrency} requests "
                "in flight (FOUNDRY_PROXY_MAX_CONCURRENCY); retry shortly",
                [(b"retry-after", b"1")],
            )
            return False
        return True

    async def hold_slot(self) -> bool:
        """A slot for a Realtime session, from the same max_concurrency as requests, waiting
        up to queue_timeout (False: none came). The session gives it back with release_slot."""
        try:
            async with asyncio.timeout(self._config.queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            return False
        return True

    def release_slot(self) -> None:
        self._slots.release()

    def _request_id(self) -> str:
        """A version-4 UUID from a generator seeded once from the OS: uuid.uuid4() reads
        os.urandom on every call, a system call per request (measured ~3 % of the CPU). Ids
        only need to be unique, not unpredictable."""
        n = self._ids.getrandbits(128)
        n = n & ~(0xF << 76) | 0x4 << 76  # version 4 (RFC 9562 section 5.4)
        n = n & ~(0x3 << 62) | 0x2 << 62  # the RFC variant
        h = f"{n:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def key_ok(self, presented: list[str] | None) -> bool:
        """Whether one of the presented values is an inbound key, in constant time: every
        presented value is compared with every key, whatever matched earlier."""
        found = False
        for value in presented or ():
            candidate = value.encode()
            for key in self._config.keys:
                found |= hmac.compare_digest(candidate, key)
        return found

    async def _not_found(
        self, send: Send, method: str, path: str, host: str, no_route: str = ""
    ) -> None:
        """404 for what no Azure operation is (``path`` as the client sent it): most likely a
        typo, so the answer names the closest known operation rather than a setting; an
        Anthropic call outside /anthropic/ is told the base URL to use (``host``: its Host)."""
        if anthropic_call(path):
            await anthropic_elsewhere(send, method, path, host)
            return
        known, close = self._config.policy.closest(method, path)
        hint = f"did you mean {known}?" if close else f"the nearest known operation is {known}"
        if no_route:
            message = f"{no_route}; {hint}"
        else:
            message = (
                f"{method} {path} is not an operation foundry-proxy knows; {hint} (an Azure "
                "operation newer than foundry-proxy can still be allowed with "
                "FOUNDRY_PROXY_ALLOW)"
            )
        await send_error(send, 404, "not_found", message)

    async def _refuse_operation(self, send: Send, verdict: int, method: str, path: str) -> None:
        if verdict == 405:
            allowed = self._config.policy.allowed_methods(path)
            await send_error(
                send,
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path} by foundry-proxy's policy "
                f"(allowed: {', '.join(allowed)}; see FOUNDRY_PROXY_ALLOW)",
                [(b"allow", ", ".join(allowed).encode())],
            )
            return
        await send_error(
            send,
            403,
            "operation_not_allowed",
            f"{method} {path} is not an operation foundry-proxy forwards by default; an operator "
            "can allow it with FOUNDRY_PROXY_ALLOW (for example FOUNDRY_PROXY_ALLOW="
            f"'{method} {path}')",
        )

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        tap: _Tap,
        target: Target,
        inbound: Inbound,
        x: Exchange,
    ) -> None:
        send = tap.send
        headers, length = inbound.headers, inbound.length
        token_scope = self._config.projects_scope if target.projects else self._config.scope
        if length is not None and length > self._config.max_body_bytes:
            await too_large(send, self._config.max_body_bytes)
            return
        owner = asyncio.current_task()
        assert owner is not None
        watch = Watch(receive, owner)
        # Counted against the body budget by the listener as it arrives (budget.py).
        held = scope.get(HELD_KEY)
        body = Body(length, self._config.max_body_bytes, held)
        slot = False
        try:
            await body.read_start(receive, self._config.replay_body_limit)
            if body.data is not None:
                watch.start()
                if not x.deployment:
                    tap.request_body = body.data  # the bytes kept for replay, not a copy
            # The slot is taken once the body (or, for a large one, its replayable start) is
            # in: a client trickling its body holds no slot meanwhile (docs/security.md).
            slot = await self._take_slot(send)
            if not slot:
                return
            token = self._tokens.token_now(token_scope)
            if token is None:
                try:
                    token = await self._tokens.token(token_scope)
                except CredentialError as err:
                    await token_unavailable(send, err, self._tokens.retry_in(token_scope))
                    return
            if watch.gone:
                return
            url = URL(self._origin + target.path_qs, encoded=True)
            request = _Request(scope["method"], url, headers, body, token, token_scope)
            await self._exchange(request, receive, send, watch)
        except ClientGone:
            log.debug("client disconnected during the request body")
        except TooLarge:
            await too_large(send, self._config.max_body_bytes)
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
                self._slots.release()
            x.bytes_in = body.size  # Body counts what it read; no wrapper around receive

    def refusal(self, inbound: Inbound, scope: Scope) -> tuple[str, str] | None:
        """Refuse what a web page could send: DNS rebinding and cross-site requests.

        A page that rebinds its own name to 127.0.0.1 sends its own name as Host; a page
        posting across sites sends an Origin (or Sec-Fetch-Site: cross-site). Apps and SDKs
        send neither.
        """
        cfg = self._config
        host = inbound.host
        # Over a Unix socket (uvicorn gives no port for it) no browser can be the caller.
        unix = scope.get("server") is not None and scope["server"][1] is None
        if cfg.loopback_only and host and host not in self._loopback_hosts and not unix:
            if not is_loopback_host(host_of_authority(host)):
                return "forbidden_host", (
                    "the Host header names a host other than this machine's loopback address; "
                    "call the proxy as 127.0.0.1, localhost or [::1]"
                )
            if len(self._loopback_hosts) < 16:
                self._loopback_hosts.add(host)
        if inbound.origin is not None and inbound.origin.rstrip("/") not in cfg.allowed_origins:
            return "forbidden_origin", (
                "requests from web pages are refused; allow an origin with "
                "FOUNDRY_PROXY_ALLOWED_ORIGINS if a page of yours should call the proxy"
            )
        if inbound.cross_site and inbound.origin is None:
            return "forbidden_origin", "cross-site requests from web pages are refused"
        return None

    async def _exchange(
        self, request: _Request, receive: Receive, send: Send, watch: Watch
    ) -> None:
        session = self._session
        assert session is not None, "Forwarder.start() was not awaited"
        body = request.body
        headers = request.headers
        data: bytes | AsyncIterator[bytes] | None
        if body.data is not None:
            data = body.data if body.data or body.length is not None else None
        else:
            data = body.stream(receive, watch)
            if body.length is not None:
                headers = [*headers, ("Content-Length", str(body.length))]
        token = request.token
        replayed = False
        while True:
            sent = [*headers, ("Authorization", "Bearer " + token)]
            try:
                response = await session.request(
                    request.method,
                    request.url,
                    headers=sent,
                    data=data,
                    allow_redirects=False,
                    skip_auto_headers=_unsent(headers),
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                if body.gone:
                    raise ClientGone from None
                if body.too_large:
                    raise TooLarge from None
                await upstream_failed(send, exc, self._origin)
                return
            complete = False
            try:
                if response.status == 401 and not replayed:
                    try:
                        retry, early = await _token_rejected(response)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        await upstream_failed(send, exc, self._origin)
                        return
                    if retry and body.data is not None:
                        fresh = await self._tokens.refreshed(request.token_scope, token)
                        if fresh is not None:
                            log.info("upstream refused the token; replaying with a fresh one")
                            token, replayed = fresh, True
                            continue
                    elif retry:
                        self._tokens.invalidate(request.token_scope, token)
                    if early is not None:
                        await _send_buffered(send, response, early)
                        complete = True
                        return
                complete = await _relay(send, response)
            finally:
                if complete:
                    response.release()
                else:
                    response.close()
            return


# Headers aiohttp adds to a request that lacks them (Content-Type: application/octet-stream on
# a body, Accept: */*, its own User-Agent): the upstream must see the client's request as sent.
_AUTO_HEADERS = frozenset({"accept", "user-agent", "content-type"})


def _unsent(headers: list[tuple[str, str]]) -> frozenset[str] | None:
    """Which of _AUTO_HEADERS the client did not send; None (aiohttp's fast path) when it
    sent them all, as the SDKs do."""
    return _AUTO_HEADERS.difference(name for name, _ in headers) or None


async def _token_rejected(response: aiohttp.ClientResponse) -> tuple[bool, bytes | None]:
    """Does this 401 say the token itself was bad, so a new one may help (upstream_refusals.py)?
    Returns the verdict and the body if it had to be read.
    """
    challenge = "WWW-Authenticate" in response.headers
    length = response.content_length
    if length is None or length > _INSPECT_LIMIT:
        return challenge, None
    raw = await response.read()
    try:
        parsed = json.loads(_decoded(raw, response.headers.get("Content-Encoding", "")))
    except ValueError:
        parsed = None
    return classify_401(parsed, challenge=challenge) is Refusal.TOKEN_REJECTED, raw


def _decoded(raw: bytes, encoding: str) -> bytes:
    """The body as plain bytes, for inspection only (the client gets ``raw`` unchanged).

    The client's Accept-Encoding goes upstream, so a 401 may arrive gzipped.
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding in ("gzip", "x-gzip", "deflate"):
        # wbits 47: zlib or gzip header, detected; never inflate past the inspection limit.
        try:
            return zlib.decompressobj(wbits=47).decompress(raw, _INSPECT_LIMIT)
        except zlib.error:
            return b""
    return b""


async def _send_buffered(send: Send, response: aiohttp.ClientResponse, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": response_headers(response.raw_headers, response.status),
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _relay(send: Send, response: aiohttp.ClientResponse) -> bool:
    """Stream the upstream response to the client; False when it broke off."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": response_headers(response.raw_headers, response.status),
        }
    )
    content = response.content
    try:
        while True:
            chunk = await content.readany()
            if not chunk or content.is_eof():
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
                return True
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Headers are out; the only honest signal left is to cut the connection without the
        # final chunk, so the client sees a broken stream, never a clean short one.
        log.warning(
            "upstream response broke off (%s); closing the client connection", type(exc).__name__
        )
        return False


def route_of(path: str) -> tuple[str, str]:
    """The route family of an upstream path, for metrics and logs, and the deployment when the
    path names one (``/openai/deployments/{d}/...``)."""
    if path.startswith("/openai/v1/"):
        return "v1", ""
    if path.startswith("/openai/deployments/"):
        return "deployments", path.split("/", 4)[3]
    if path.startswith("/openai/"):
        return "openai", ""
    if path.startswith("/models/"):
        return "models", ""
    if path.startswith("/anthropic/"):
        return "anthropic", ""
    return "projects", ""


def _host_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The Host header, for an answer to a request whose headers were not parsed."""
    return next((v.decode("latin-1") for k, v in headers if k == b"host"), "")


class _Tap:
    """Sits on ``send``: notes status, timing, sizes and ids for an Exchange, and keeps a copy
    of what usage can be read from (a JSON body's head and tail, or a stream's) without
    delaying or changing a byte. Parsing happens in finish(), after the answer has gone out.

    When the answer does not name the model (a stream without usage, an error, audio), the
    model is the one the request body names, if the body was small enough to be kept whole
    for replay (see usage.model_of_request)."""

    __slots__ = (
        "_head",
        "_json",
        "_kept",
        "_metrics",
        "_send",
        "_stream",
        "_wants_model",
        "request_body",
        "x",
    )

    def __init__(self, x: Exchange, send: Send, metrics: Metrics | None, wants_model: bool) -> None:
        self.x = x
        self._send = send
        self._metrics = metrics
        self._wants_model = wants_model  # metrics or the access log will read x.model
        self._kept = bytearray()
        self._head: bytearray | None = None  # a Claude stream's first bytes (message_start)
        self._json = self._stream = False
        self.request_body: bytes | None = None

    async def send(self, message: Message) -> None:
        x = self.x
        if message["type"] == "http.response.start":
            x.status = message["status"]
            x.first_byte = time.perf_counter()
            self._inspect(message["headers"])
        else:
            body = message.get("body", b"")
            x.bytes_out += len(body)
            if self._stream:
                head = self._head
                if head is not None and len(head) < STREAM_HEAD:
                    head += body[: STREAM_HEAD - len(head)]
                self._kept += body
                if len(self._kept) > 2 * STREAM_TAIL:
                    del self._kept[:-STREAM_TAIL]
            elif self._json:
                # Whole while small; past that a bounded head and tail (usage.from_json).
                self._kept += body
                if self._head is not None:
                    if len(self._kept) > 2 * JSON_TAIL:
                        del self._kept[:-JSON_TAIL]
                elif len(self._kept) > JSON_HEAD + 2 * JSON_TAIL:
                    self._head = self._kept[:JSON_HEAD]
                    del self._kept[:-JSON_TAIL]
        await self._send(message)

    def _inspect(self, headers: list[tuple[bytes, bytes]]) -> None:
        x = self.x
        for name, value in headers:
            if name == b"content-type":
                if value.startswith(b"text/event-stream"):
                    x.streamed = self._stream = True
                    if x.route == "anthropic":
                        self._head = bytearray()
                    if self._metrics is not None:
                        self._metrics.streams.inc()
                else:
                    self._json = value.startswith(b"application/json") and x.status == 200
            elif name == b"apim-request-id":
                x.apim_request_id = value.decode("latin-1")
            elif name.startswith(b"x-ratelimit-remaining-"):
                if x.ratelimit is None:
                    x.ratelimit = {}
                x.ratelimit[name[22:].decode("latin-1")] = value.decode("latin-1")
            elif name == b"x-foundry-proxy-error" and value.startswith(b"upstream_"):
                x.upstream_error = value.decode("latin-1")

    def finish(self) -> None:
        if self._stream:
            if self._metrics is not None:
                self._metrics.streams.dec()
            if self._head is not None:
                self.x.usage = from_anthropic_stream(bytes(self._head), bytes(self._kept))
                self._head = None
            else:
                self.x.usage = from_stream_tail(bytes(self._kept))
        elif self._json and self._kept:
            head = None if self._head is None else bytes(self._head)
            self.x.usage = from_json(bytes(self._kept), head)
            self._head = None
        self._kept = bytearray()
        if self.request_body is not None:
            if self._wants_model and not self.x.model:
                # On the /v1 routes the body's model is the deployment, as the path's is on
                # /openai/deployments/{deployment}/...
                self.x.deployment = model_of_request(self.request_body)
            self.request_body = None
