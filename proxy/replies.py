"""Responses the proxy makes itself, in the OpenAI error shape SDKs already parse, and the
mapping of upstream and token failures onto them.

``{"error": {"message", "type", "code", "param"}}``: the openai SDKs surface ``message`` and
``code`` to the caller, so these say what went wrong and what fixes it.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from types import MappingProxyType

import aiohttp
from starlette.types import Send

from proxy.errors import CredentialError

_TYPES = MappingProxyType(
    {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error"}
)


def error_body(status: int, code: str, message: str) -> bytes:
    kind = _TYPES.get(status, "proxy_error")
    payload = {"error": {"message": message, "type": kind, "code": code, "param": None}}
    return json.dumps(payload).encode()


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    await _send_json(send, status, code, error_body(status, code, message), extra_headers)


async def _send_json(
    send: Send,
    status: int,
    code: str,
    body: bytes,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-foundry-proxy-error", code.encode()),
    ]
    headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


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


async def anthropic_elsewhere(send: Send, method: str, path: str, host: str) -> None:
    """404 in Anthropic's error shape (what its SDKs and Claude Code parse), which also carries
    the OpenAI shape's fields, naming the base URL to use. ``host``: the request's Host."""
    code = "anthropic_base_url"
    authority = host if _AUTHORITY.fullmatch(host) else "127.0.0.1:8787"
    message = ANTHROPIC_BASE_URL.format(call=f"{method} {path}", authority=authority)
    payload = {
        "type": "error",
        "error": {"type": "not_found_error", "message": message, "code": code, "param": None},
    }
    await _send_json(send, 404, code, json.dumps(payload).encode())


log = logging.getLogger("foundry_proxy.forward")

# openai 2.x/3.x SDKs skip their retry when Retry-After exceeds 120 s.
MAX_CLIENT_RETRY_AFTER = 120


async def upstream_failed(send: Send, exc: aiohttp.ClientError | TimeoutError, origin: str) -> None:
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        await send_error(send, 504, "upstream_timeout", f"{origin} did not answer in time")
    elif isinstance(exc, aiohttp.ClientSSLError):
        await send_error(
            send,
            502,
            "upstream_tls_error",
            f"TLS with {origin} failed: if a corporate proxy inspects TLS, "
            "point SSL_CERT_FILE at its CA bundle",
        )
    elif isinstance(exc, aiohttp.ClientConnectorDNSError):
        await send_error(
            send, 502, "upstream_dns_error", f"the upstream host of {origin} could not be resolved"
        )
    elif isinstance(exc, aiohttp.ClientConnectorError):
        await send_error(send, 502, "upstream_unreachable", f"could not connect to {origin}")
    else:
        log.warning("upstream request failed: %s", type(exc).__name__)
        await send_error(
            send, 502, "upstream_error", f"the connection to {origin} failed ({type(exc).__name__})"
        )


async def too_large(send: Send, limit: int) -> None:
    await send_error(
        send,
        413,
        "request_too_large",
        f"the request body is larger than {limit} bytes (FOUNDRY_PROXY_MAX_BODY_BYTES)",
        # The unread rest of the body makes the connection unusable for another request.
        [(b"connection", b"close")],
    )


async def token_unavailable(
    send: Send, err: CredentialError, retry_in: float | None = None
) -> None:
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
    await send_error(send, 503, "token_unavailable", message, headers)
