"""A Realtime session's frames, relayed both ways once both handshakes are done.

Frames pass as they are, text as text and binary as binary; close codes and reasons pass too,
and either side closing closes the other.

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
import logging
from types import MappingProxyType

import aiohttp
from starlette.types import Receive, Send

from proxy.exchange import Exchange

log = logging.getLogger("foundry_proxy.realtime")

# Close codes that may not be sent in a close frame (RFC 6455 section 7.4.1): what a peer
# that vanished "sent" is reported onwards as an internal error, a missing code as normal.
_UNSENDABLE = MappingProxyType({1005: 1000, 1006: 1011, 1015: 1011})
# A message this small written to an upstream socket with nothing buffered goes out at once;
# larger ones, or any behind others, are watched for progress.
_SMALL = 64 * 1024


class Stalled(Exception):
    """The upstream took nothing of a message for the send deadline."""


async def pump(
    receive: Receive,
    send: Send,
    upstream: aiohttp.ClientWebSocketResponse,
    x: Exchange,
    send_timeout: float,
) -> None:
    """Relay messages both ways until either side closes, then close the other."""

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
                await _to_upstream(upstream, data, send_timeout)
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
                async with asyncio.timeout(2 * send_timeout):
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
            await _upstream_stalled(send, upstream, x, send_timeout)
        elif isinstance(error, TimeoutError):
            log.warning(
                "realtime: the client read nothing for %g s; session ended",
                2 * send_timeout,
            )
            x.close_code = 1001
        elif error is not None and not isinstance(error, OSError | aiohttp.ClientError):
            log.warning("realtime session ended by %s", type(error).__name__)


async def _to_upstream(
    upstream: aiohttp.ClientWebSocketResponse, data: str | bytes, send_timeout: float
) -> None:
    """Write one message upstream; raise Stalled when the upstream's socket takes nothing
    of it for the send deadline."""
    transport = _transport_of(upstream)
    write = upstream.send_str(data) if isinstance(data, str) else upstream.send_bytes(data)
    if transport is None or (len(data) <= _SMALL and not transport.get_write_buffer_size()):
        try:
            async with asyncio.timeout(send_timeout):
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
            done, _ = await asyncio.wait((task,), timeout=send_timeout)
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
    send: Send, upstream: aiohttp.ClientWebSocketResponse, x: Exchange, send_timeout: float
) -> None:
    log.warning(
        "realtime: the upstream took nothing of a message for %g s; session closed with "
        "1011 (FOUNDRY_PROXY_SEND_TIMEOUT)",
        send_timeout,
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
