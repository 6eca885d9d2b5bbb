"""Helpers for the load and client-fault tests: a raw asyncio HTTP/1.1 client that times every
SSE event, the file limit the proxy inherits, and small statistics. (Process measurements from
/proc are in tests/support/procfs.py.)

Raw sockets rather than an HTTP library: a thousand of them cost little, and the test decides to
the byte when a client leaves (half a body, right after the head, after the k-th event).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import resource
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.stack import Stack
from tests.support.chat import chat_body
from tests.support.identities import CLIENT_ID, TENANT

# Process measurements live in tests/support/procfs.py; these names stay importable from here.
from tests.support.procfs import fd_count as fd_count
from tests.support.procfs import rss_kb as rss_kb
from tests.support.procfs import settle_fds as settle_fds
from tests.support.rawsock import json_post

COGNITIVE = "https://cognitiveservices.azure.com"
# The fake streams N tokens as N + 4 SSE events: prompt filter results, role, N tokens, stop,
# [DONE] (tests/e2e/test_upstream_faults.py::test_stream_bytes_are_unchanged).
EXTRA_EVENTS = 4


def direct_token(s: Stack) -> str:
    """A token the fake upstream accepts, for baseline requests that bypass the proxy."""
    return s.issuer.issue(tenant=TENANT, client_id=CLIENT_ID, audience=COGNITIVE, lifetime=3600)


# -- process limits --------------------------------------------------------------------------


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted``; return the new soft limit.

    Child processes (the proxy) inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < top:
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        soft = top
    return soft


# -- statistics ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


# -- a raw HTTP/1.1 client -------------------------------------------------------------------


@dataclass
class Exchange:
    """One request's client side, with monotonic timestamps (the fakes share the clock)."""

    sent: float = 0.0
    status: int = 0
    head_at: float | None = None
    event_times: list[float] = field(default_factory=list)
    finished: bool = False  # the terminating chunk arrived
    body: bytearray = field(default_factory=bytearray)
    error: str = ""

    @property
    def events(self) -> int:
        return len(self.event_times)


def result_of(tag: str, ex: Exchange) -> dict[str, Any]:
    """An exchange as plain data (what the client process reports)."""
    return {
        "tag": tag,
        "sent": ex.sent,
        "status": ex.status,
        "finished": ex.finished,
        "events": ex.event_times,
        "done_at": ex.event_times[-1] if ex.event_times else None,
        "sha256": hashlib.sha256(ex.body).hexdigest(),
        "error": ex.error,
    }


def set_rst_on_close(writer: asyncio.StreamWriter) -> None:
    """Make close() send a RST rather than a FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)


async def read_head(reader: asyncio.StreamReader, ex: Exchange) -> bool:
    """Read the response head; True when the body is chunked."""
    head = await reader.readuntil(b"\r\n\r\n")
    ex.head_at = time.monotonic()
    lines = head.decode("latin-1").split("\r\n")
    ex.status = int(lines[0].split()[1])
    names = {line.split(":", 1)[0].strip().lower(): line for line in lines[1:] if ":" in line}
    return "chunked" in names.get("transfer-encoding", "").lower()


async def read_events(
    reader: asyncio.StreamReader,
    ex: Exchange,
    *,
    stop_after: int | None = None,
    keep_body: bool = False,
) -> None:
    """Read a chunked SSE body, timing each event; stop early after ``stop_after`` events."""
    last = b""
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            ex.finished = True
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        now = time.monotonic()
        if keep_body:
            ex.body += data
        # Events end with a blank line and their JSON holds no raw newline, so counting
        # "\n\n" (across chunk boundaries too) counts events exactly.
        found = (last + data).count(b"\n\n")
        ex.event_times.extend([now] * found)
        last = data[-1:]
        if stop_after is not None and ex.events >= stop_after:
            return


async def stream_once(
    port: int,
    path: str,
    headers: dict[str, str],
    *,
    timeout: float = 60,
    body: bytes | None = None,
    keep_body: bool = False,
) -> Exchange:
    """One complete streaming request; errors are recorded on the exchange, not raised."""
    ex = Exchange()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            ex.sent = time.monotonic()
            writer.write(json_post(path, chat_body(stream=True) if body is None else body, headers))
            chunked = await read_head(reader, ex)
            if chunked:
                await read_events(reader, ex, keep_body=keep_body)
            else:
                ex.error = f"status {ex.status}, not chunked"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as e:
        ex.error = f"{type(e).__name__}: {e}"
    finally:
        if writer is not None:
            await close_writer(writer)
    return ex
