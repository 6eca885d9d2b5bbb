"""The answers the proxy makes itself: one error body in the shape the caller's SDK parses, and
the mapping of upstream and token failures onto it.

OpenAI's shape, ``{"error": {"message", "type", "code", "param"}}``, everywhere but on Claude's
routes: the openai SDKs surface ``message`` and ``code`` to the caller, so these say what went
wrong and what fixes it. Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``,
on /anthropic/ and for Anthropic calls sent elsewhere: its SDKs and Claude Code read that one
(docs/routes.md). Either carries the proxy's ``code`` inside ``error``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from types import MappingProxyType

import aiohttp
from starlette.types import Send

from proxy.errors import CredentialError

log = logging.getLogger("foundry_proxy.forward")

Headers = tuple[tuple[bytes, bytes], ...]

# Anthropic's error types by status (https://docs.claude.com/en/api/errors); another 4xx is
# an invalid_request_error there too, another 5xx an api_error.
_ANTHROPIC_TYPES = MappingProxyType(
    {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "overloaded_error",
        529: "overloaded_error",
    }
)
CLOSE: Headers = ((b"connection", b"close"),)


def error_body(status: int, code: str, message: str, *, anthropic: bool = False) -> bytes:
    """The JSON body of an error the proxy answers with ``status``: OpenAI's shape, or with
    ``anthropic`` Anthropic's. A 4xx is the request's fault (invalid_request_error in both);
    a 5xx is the proxy's or the upstream's."""
    if anthropic:
        kind = _ANTHROPIC_TYPES.get(status) or (
            "invalid_request_error" if status < 500 else "api_error"
        )
        error = {"type": kind, "message": message, "code": code}
        return json.dumps({"type": "error", "error": error}).encode()
    kind = "invalid_request_error" if status < 500 else "proxy_error"
    return json.dumps(
        {"error": {"message": message, "type": kind, "code": code, "param": None}}
    ).encode()


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error the proxy answers with, before it is put in a shape: the status, the proxy's
    code (also the metrics' label), what to tell the caller and any headers it needs."""

    status: int
    code: str
    message: str
    headers: Headers = ()
    #: The upstream failed (counted in foundry_proxy_upstream_errors by ``code``).
    upstream: bool = False

    def head(self, body: bytes) -> list[tuple[bytes, bytes]]:
        """Response headers for ``body``."""
        return [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *self.headers,
        ]

    def body(self, *, anthropic: bool) -> bytes:
        return error_body(self.status, self.code, self.message, anthropic=anthropic)


async def send_error(send: Send, reply: ErrorReply, *, anthropic: bool = False) -> None:
    body = reply.body(anthropic=anthropic)
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.head(body)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def upstream_failure(exc: aiohttp.ClientError | TimeoutError, origin: str) -> ErrorReply:
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return ErrorReply(
            504, "upstream_timeout", f"{origin} did not answer in time", upstream=True
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        message = (
            f"TLS with {origin} failed: if a corporate proxy inspects TLS, point SSL_CERT_FILE "
            "at its CA bundle"
        )
        return ErrorReply(502, "upstream_tls_error", message, upstream=True)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        message = f"the upstream host of {origin} could not be resolved"
        return ErrorReply(502, "upstream_dns_error", message, upstream=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ErrorReply(
            502, "upstream_unreachable", f"could not connect to {origin}", upstream=True
        )
    log.warning("upstream request failed: %s", type(exc).__name__)
    message = f"the connection to {origin} failed ({type(exc).__name__})"
    return ErrorReply(502, "upstream_error", message, upstream=True)


def too_large(limit: int) -> ErrorReply:
    return ErrorReply(
        413,
        "request_too_large",
        f"the request body is larger than {limit} bytes (FOUNDRY_PROXY_MAX_BODY_BYTES)",
        # The unread rest of the body makes the connection unusable for another request.
        CLOSE,
    )


# openai 2.x/3.x SDKs skip their retry when Retry-After exceeds 120 s.
MAX_CLIENT_RETRY_AFTER = 120


def token_unavailable(err: CredentialError, retry_in: float | None = None) -> ErrorReply:
    """503 for a request that got no token. ``retry_in``: seconds until the proxy's next token
    call, when the last one failed and none is under way (TokenProvider.retry_in)."""
    message = f"foundry-proxy has no Entra ID token: {err.code}: {err.message}"
    if err.hint:
        message += f". Fix: {err.hint}"
    headers: list[tuple[bytes, bytes]] = []
    if err.permanent:
        # Retrying cannot help until the configuration changes.
        headers.append((b"x-should-retry", b"false"))
    elif retry_in is not None:
        # The token service is failing and the proxy already retries it on its own schedule;
        # until its next call every request gets this same answer. The openai SDKs (Python and
        # Node) would retry twice, sleeping Retry-After each time (they honour up to 120 s),
        # so the caller saw the error only after the sum of those sleeps; x-should-retry: false
        # makes them raise now. Retry-After still tells when the next token call is due (plus
        # a second for it to finish), for clients that schedule their own retries by it.
        due = max(1, math.ceil(retry_in))
        wait = min(MAX_CLIENT_RETRY_AFTER, due + 1)
        message += f" (foundry-proxy asks for a token again in {due} s)"
        headers.append((b"x-should-retry", b"false"))
        headers.append((b"retry-after", str(wait).encode()))
    else:
        wait = (
            5 if err.retry_after is None else min(MAX_CLIENT_RETRY_AFTER, int(err.retry_after) + 1)
        )
        headers.append((b"retry-after", str(wait).encode()))
    return ErrorReply(503, "token_unavailable", message, tuple(headers))


# -- Claude (the Anthropic Messages API) -----------------------------------------------------
# Foundry serves Claude at {resource}/anthropic/v1/messages, beside (not under) the OpenAI-style
# routes, and so does foundry-proxy: the Anthropic SDKs and Claude Code take the proxy's
# /anthropic as their base URL and call {base URL}/v1/messages. A client given the bare proxy
# address calls /v1/messages, which looks like a typo of an OpenAI operation; it is told the
# base URL to use instead (docs/claude.md).

_ANTHROPIC_ENDINGS = ("/v1/messages", "/v1/messages/count_tokens", "/v1/complete")
_ANTHROPIC_BARE = ("/messages", "/messages/count_tokens", "/complete")  # a base URL ending /v1
ANTHROPIC_BASE_URL = (
    "{call} is an Anthropic API call (Claude). foundry-proxy serves Claude under /anthropic/, "
    "as Azure AI Foundry does: set the client's base URL to http://{authority}/anthropic "
    '(Anthropic(base_url="http://{authority}/anthropic"), or ANTHROPIC_BASE_URL for Claude '
    "Code)"
)
# What may be echoed back as the proxy's address: a host name or address and a port, nothing
# a client could use to put other text into the answer.
_AUTHORITY = re.compile(
    r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?"
)


def anthropic_call(path: str) -> bool:
    """Whether a local path outside /anthropic/ is an Anthropic API call."""
    if path.startswith("/anthropic/"):
        return False
    return (
        path == "/anthropic"
        or path.endswith(_ANTHROPIC_ENDINGS)
        or path in _ANTHROPIC_BARE
        or "/v1/messages/batches" in path
        or path.startswith("/messages/batches")
    )


def anthropic_elsewhere(method: str, path: str, host: str) -> ErrorReply:
    """404 naming the base URL to use, for an Anthropic call outside /anthropic/ (to be sent in
    Anthropic's shape). ``host``: the request's Host."""
    authority = host if _AUTHORITY.fullmatch(host) else "127.0.0.1:8787"
    message = ANTHROPIC_BASE_URL.format(call=f"{method} {path}", authority=authority)
    return ErrorReply(404, "anthropic_base_url", message)
