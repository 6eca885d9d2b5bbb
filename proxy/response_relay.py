"""Passing an upstream answer to the client, and reading a 401 to decide on a replay.

The answer's status and filtered headers go first, then its body as it arrives, never decoded
or re-framed, so SSE events reach the client as the upstream writes them.
"""

from __future__ import annotations

import json
import logging
import zlib

import aiohttp
from starlette.types import Send

from proxy.rewrite import response_headers
from proxy.upstream_refusals import Refusal, classify_401

log = logging.getLogger("foundry_proxy.forward")

# A 401 body worth inspecting is small JSON; never buffer more than this to look at it.
_INSPECT_LIMIT = 64 * 1024
# Headers aiohttp adds to a request that lacks them (Content-Type: application/octet-stream on
# a body, Accept: */*, its own User-Agent): the upstream must see the client's request as sent.
_AUTO_HEADERS = frozenset({"accept", "user-agent", "content-type"})


def unsent(headers: list[tuple[str, str]]) -> frozenset[str] | None:
    """Which of _AUTO_HEADERS the client did not send; None (aiohttp's fast path) when it
    sent them all, as the SDKs do."""
    return _AUTO_HEADERS.difference(name for name, _ in headers) or None


async def token_rejected(response: aiohttp.ClientResponse) -> tuple[bool, bytes | None]:
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


async def answer(send: Send, response: aiohttp.ClientResponse, read: bytes | None) -> None:
    """The upstream's answer to the client (``read``: its body, if already read), then the
    response given back to the pool, or closed when it broke off or the client left."""
    complete = False
    try:
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": response_headers(response.raw_headers, response.status),
            }
        )
        if read is not None:
            await send({"type": "http.response.body", "body": read, "more_body": False})
            complete = True
        else:
            complete = await _relay(send, response.content)
    finally:
        if complete:
            response.release()
        else:
            response.close()


async def _relay(send: Send, content: aiohttp.StreamReader) -> bool:
    """Stream the body to the client; False when the upstream broke off."""
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
