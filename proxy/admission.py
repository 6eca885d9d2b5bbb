"""Admission: whether a request or a Realtime handshake may go upstream, decided in one place.

The HTTP forwarder (forwarding.py) and the Realtime relay (realtime.py) both ask the same
``Gate``: the route and the raw path, the headers, web pages (Host, Origin), the inbound keys,
a request id, the operation policy, and later a concurrency slot from the one semaphore both
share. Its answer is an ``Admission`` to act on, or a ``Refusal`` holding the error to answer
with; the HTTP path sends it as a response, the WebSocket path as its handshake denial, with
the same status, code, message and headers (docs/architecture.md, "A request, step by step").
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from dataclasses import dataclass

from starlette.types import Scope

from proxy.addresses import host_of_authority, is_loopback_host
from proxy.exchange import Exchange
from proxy.policy import Policy
from proxy.replies import CLOSE, ErrorReply, anthropic_call, anthropic_elsewhere
from proxy.rewrite import BadTarget, Inbound, Target, map_target, request_headers
from proxy.settings import Settings

_KEY_MESSAGE = (
    "foundry-proxy requires an inbound key: send it as Authorization: Bearer <key> (the api_key "
    "of OpenAI SDKs), as an api-key header or as an x-api-key header (the api_key of Anthropic "
    "SDKs)"
)
_KEY_CHALLENGE = ((b"www-authenticate", b'Bearer realm="foundry-proxy"'),)
_RETRY_SOON = ((b"retry-after", b"1"),)


@dataclass(slots=True)
class Admission:
    """Go ahead: where the request goes, its headers for upstream (with its request id), and
    the token scope it needs."""

    target: Target
    inbound: Inbound
    token_scope: str
    anthropic: bool  # answer the proxy's own errors in Anthropic's shape


@dataclass(frozen=True, slots=True)
class Refusal:
    """Refused: the error to answer with, in Anthropic's shape when ``anthropic``."""

    reply: ErrorReply
    anthropic: bool


class Gate:
    """The admission rules for HTTP requests and Realtime handshakes alike, and the slots."""

    def __init__(self, settings: Settings, policy: Policy) -> None:
        self._settings = settings
        self._policy = policy
        self._keys = tuple(k.encode() for k in settings.inbound_keys())  # empty: none required
        # Listening on loopback only: Host must name loopback too (DNS rebinding).
        self._loopback_only = is_loopback_host(settings.host)
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self.slots_held = 0  # read by the idle collector (garbage.py)

    def admit(self, scope: Scope, x: Exchange) -> Admission | Refusal:
        """Judge a request (or handshake) by its target and headers; nothing is awaited. What
        it learns (route, deployment, request id) is noted on ``x``."""
        raw_path: bytes = scope["raw_path"]
        anthropic = raw_path.startswith(b"/anthropic/")
        method: str = scope.get("method", "GET")
        try:
            target = map_target(raw_path, scope["query_string"])
        except BadTarget as exc:
            if exc.status == 404:
                host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
                return self._not_found(method, x.path, host, anthropic, exc.message)
            return Refusal(ErrorReply(exc.status, "invalid_request", exc.message), anthropic)
        try:
            if scope["http_version"] not in ("1.1", "1.0"):
                raise BadTarget(400, "only HTTP/1.1 and HTTP/1.0 requests are accepted")
            inbound = request_headers(scope["headers"])
        except BadTarget as exc:
            # Framing the proxy cannot trust: answer and close, so nothing that followed on
            # this connection is read as another request.
            return Refusal(ErrorReply(exc.status, "invalid_request", exc.message, CLOSE), anthropic)
        web_page = self.web_page(inbound, scope)
        if web_page is not None:
            return Refusal(ErrorReply(403, *web_page), anthropic)
        if self._keys and not self.key_ok(inbound.presented):
            return Refusal(
                ErrorReply(401, "invalid_api_key", _KEY_MESSAGE, _KEY_CHALLENGE), anthropic
            )
        x.route, x.deployment = route_of(target.path)
        if not inbound.client_request_id:
            # Sent upstream and logged, so one id ties a line of ours to Azure's records.
            inbound.client_request_id = self._request_id()
            inbound.headers.append(("x-ms-client-request-id", inbound.client_request_id))
        x.client_request_id = inbound.client_request_id
        verdict = self._policy.decide(method, target.path)
        if verdict == 404:
            return self._not_found(method, x.path, inbound.host or "", anthropic)
        if verdict != 200:
            return Refusal(self._refused_operation(verdict, method, target.path), anthropic)
        settings = self._settings
        token_scope = settings.projects_scope if target.projects else settings.scope
        return Admission(target, inbound, token_scope, anthropic)

    async def take_slot(self) -> ErrorReply | None:
        """One of max_concurrency slots, shared by requests and Realtime sessions, waiting up
        to queue_timeout; None once held (give it back with ``release_slot``), else the 503."""
        if not self._slots.locked():
            await self._slots.acquire()
            self.slots_held += 1
            return None
        try:
            async with asyncio.timeout(self._settings.queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            return ErrorReply(
                503,
                "upstream_pool_exhausted",
                f"foundry-proxy is at its limit of {self._settings.max_concurrency} requests "
                "and Realtime sessions in flight (FOUNDRY_PROXY_MAX_CONCURRENCY); retry shortly",
                _RETRY_SOON,
            )
        self.slots_held += 1
        return None

    def release_slot(self) -> None:
        self.slots_held -= 1
        self._slots.release()

    def web_page(self, inbound: Inbound, scope: Scope) -> tuple[str, str] | None:
        """Refuse what a web page could send: DNS rebinding and cross-site requests.

        A page that rebinds its own name to 127.0.0.1 sends its own name as Host; a page
        posting across sites sends an Origin (or Sec-Fetch-Site: cross-site). Apps and SDKs
        send neither. Returns the code and message of the refusal.
        """
        host = inbound.host
        # Over a Unix socket (uvicorn gives no port for it) no browser can be the caller.
        unix = scope.get("server") is not None and scope["server"][1] is None
        # Parsed on every request: a cache of known Host values saved ~2 % of a request's CPU,
        # under the ~5 % a cache must earn here (issue 14), so there is none.
        if (
            self._loopback_only
            and host
            and not unix
            and not is_loopback_host(host_of_authority(host))
        ):
            return "forbidden_host", (
                "the Host header names a host other than this machine's loopback address; "
                "call the proxy as 127.0.0.1, localhost or [::1]"
            )
        origin = inbound.origin
        if origin is not None and origin.rstrip("/") not in self._settings.origins:
            return "forbidden_origin", (
                "requests from web pages are refused; allow an origin with "
                "FOUNDRY_PROXY_ALLOWED_ORIGINS if a page of yours should call the proxy"
            )
        if inbound.cross_site and origin is None:
            return "forbidden_origin", "cross-site requests from web pages are refused"
        return None

    def key_ok(self, presented: list[str] | None) -> bool:
        """Whether one of the presented values is an inbound key, in constant time: every
        presented value is compared with every key, whatever matched earlier."""
        found = False
        for value in presented or ():
            candidate = value.encode()
            for key in self._keys:
                found |= hmac.compare_digest(candidate, key)
        return found

    def _request_id(self) -> str:
        # uuid4() reads os.urandom per call; a generator seeded once saved ~3 % of a request's
        # CPU, under the ~5 % a hand-rolled id must earn (issue 14), so the standard one is used.
        return str(uuid.uuid4())

    def _not_found(
        self, method: str, path: str, host: str, anthropic: bool, no_route: str = ""
    ) -> Refusal:
        """404 for what no Azure operation is (``path`` as the client sent it): most likely a
        typo, so the answer names the closest known operation rather than a setting; an
        Anthropic call outside /anthropic/ is told the base URL to use (``host``: its Host)."""
        if anthropic_call(path):
            return Refusal(anthropic_elsewhere(method, path, host), anthropic=True)
        known, close = self._policy.closest(method, path)
        hint = f"did you mean {known}?" if close else f"the nearest known operation is {known}"
        if no_route:
            message = f"{no_route}; {hint}"
        else:
            message = (
                f"{method} {path} is not an operation foundry-proxy knows; {hint} (an Azure "
                "operation newer than foundry-proxy can still be allowed with "
                "FOUNDRY_PROXY_ALLOW)"
            )
        return Refusal(ErrorReply(404, "not_found", message), anthropic)

    def _refused_operation(self, verdict: int, method: str, path: str) -> ErrorReply:
        if verdict == 405:
            allowed = ", ".join(self._policy.allowed_methods(path))
            return ErrorReply(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path} by foundry-proxy's policy "
                f"(allowed: {allowed}; see FOUNDRY_PROXY_ALLOW)",
                ((b"allow", allowed.encode()),),
            )
        return ErrorReply(
            403,
            "operation_not_allowed",
            f"{method} {path} is not an operation foundry-proxy forwards by default; an operator "
            "can allow it with FOUNDRY_PROXY_ALLOW (for example FOUNDRY_PROXY_ALLOW="
            f"'{method} {path}')",
        )


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
