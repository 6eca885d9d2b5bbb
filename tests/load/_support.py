"""Helpers for the load and client-fault tests: a raw asyncio HTTP/1.1 client that times every
SSE event, process measurements from /proc, and small statistics.

Raw sockets rather than an HTTP library: a thousand of them cost little, and the test decides to
the byte when a client leaves (half a body, right after the head, after the k-th event).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import resource
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.stack import CLIENT_ID, TENANT, Stack

COGNITIVE = "https://cognitiveservices.azure.com"
# The fake streams N tokens as N + 4 SSE events: prompt filter results, role, N tokens, stop,
# [DONE] (tests/e2e/test_upstream_faults.py::test_stream_bytes_are_unchanged).
EXTRA_EVENTS = 4


def chat_body(stream: bool = True) -> bytes:
    return json.dumps(
        {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    ).encode()


def request_bytes(
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> bytes:
    head = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def direct_token(s: Stack) -> str:
    """A token the fake upstream accepts, for baseline requests that bypass the proxy."""
    return s.issuer.issue(tenant=TENANT, client_id=CLIENT_ID, audience=COGNITIVE, lifetime=3600)


# -- process measurements -------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS")


def peak_rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_count(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def settle_fds(pid: int, target: int, timeout: float) -> int:
    """Poll until the fd count is at most ``target`` (bounded); return the last count."""
    deadline = time.monotonic() + timeout
    count = fd_count(pid)
    while count > target and time.monotonic() < deadline:
        time.sleep(0.1)
        count = fd_count(pid)
    return count


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


class RssSampler:
    """Samples a process's RSS from a background thread; keeps the maximum seen."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid = pid
        self.every = every
        self.peak_kb = rss_kb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(OSError):
                self.peak_kb = max(self.peak_kb, rss_kb(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))


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
            writer.write(request_bytes(path, chat_body() if body is None else body, headers))
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
