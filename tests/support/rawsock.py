"""A raw-socket HTTP/1.1 client for tests that decide every byte: builds a request exactly as
given (malformed ones included), writes it, reads bounded.

Writing and reading are interleaved (``select``), so an answer the server sends before it has
read everything (a 413, a 431, a 400 and close) is captured rather than lost to the reset that
follows. Every socket operation has a timeout and every loop a deadline: a server that hangs
shows up as ``timed_out``, never as a stuck test.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field


def _bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("latin-1")


def request(
    line: str | bytes,
    *headers: str | bytes,
    body: bytes = b"",
    host: str | bytes | None = "127.0.0.1",
) -> bytes:
    """One request, byte for byte as given: ``line`` (the request line, "GET / HTTP/1.1"), then
    ``Host: host`` unless ``host`` is None, then each of ``headers``, then the empty line and
    ``body``. Each line gets a CRLF and nothing else is checked or added, so a malformed line
    goes out as written. Text is encoded as Latin-1 (one byte per character).
    """
    lines = [_bytes(line), *([b"Host: " + _bytes(host)] if host is not None else [])]
    lines += [_bytes(h) for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def json_post(path: str, body: bytes, headers: Mapping[str, str] | None = None) -> bytes:
    """A well-formed POST of ``body`` to ``path`` as JSON, framed by its Content-Length, with
    ``headers`` (the fake Foundry's steering fields, a test id) after the Content-Type."""
    return request(
        f"POST {path} HTTP/1.1",
        "Content-Type: application/json",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
        f"Content-Length: {len(body)}",
        body=body,
    )


def json_head(path: str, length: int) -> bytes:
    """The head of a POST to ``path`` announcing ``length`` bytes of JSON, for a test that sends
    the body apart (in pieces, slowly, in part or never)."""
    return request(
        f"POST {path} HTTP/1.1", "Content-Type: application/json", f"Content-Length: {length}"
    )


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name.lower()]


@dataclass
class Exchange:
    """Everything the server sent on one connection, and how the connection ended."""

    data: bytes = b""
    responses: list[RawResponse] = field(default_factory=list)
    closed: bool = False  # the server closed (FIN or RST) before our deadline
    timed_out: bool = False  # our deadline passed with the connection still open
    unsent: int = 0  # bytes the server never read: it closed while we were writing

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    @property
    def text(self) -> str:
        return self.data.decode("latin-1")


class _Incomplete(Exception):
    pass


def _head(buf: bytes) -> tuple[int, list[tuple[bytes, bytes]], int]:
    end = buf.find(b"\r\n\r\n")
    if end == -1:
        raise _Incomplete
    lines = buf[:end].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {lines[0][:100]!r}")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return int(parts[1]), headers, end + 4


def _chunked(rest: bytes) -> tuple[bytes, int]:
    body = b""
    pos = 0
    while True:
        line_end = rest.find(b"\r\n", pos)
        if line_end == -1:
            raise _Incomplete
        size = int(rest[pos:line_end].split(b";")[0], 16)
        start = line_end + 2
        if size == 0:
            end = rest.find(b"\r\n\r\n", pos)
            if end == -1:
                raise _Incomplete
            return body, end + 4
        if len(rest) < start + size + 2:
            raise _Incomplete
        body += rest[start : start + size]
        pos = start + size + 2


def _parse_one(buf: bytes, closed: bool) -> tuple[RawResponse, bytes]:
    """One response from the front of ``buf`` and the rest; raises _Incomplete."""
    status, headers, start = _head(buf)
    names = dict(headers)
    rest = buf[start:]
    if status < 200 or status in (204, 304):
        return RawResponse(status, headers, b"", buf[:start]), rest
    if names.get(b"transfer-encoding", b"").lower() == b"chunked":
        body, used = _chunked(rest)
    elif b"content-length" in names:
        used = int(names[b"content-length"])
        if len(rest) < used:
            raise _Incomplete
        body = rest[:used]
    elif closed:
        body, used = rest, len(rest)  # delimited by the close
    else:
        raise _Incomplete
    return RawResponse(status, headers, body, buf[: start + used]), rest[used:]


def parse_responses(data: bytes, closed: bool) -> list[RawResponse]:
    """Every complete response in ``data``; when the connection closed, also a truncated one
    whose head arrived (its body is whatever came)."""
    out: list[RawResponse] = []
    buf = data
    while buf:
        try:
            response, buf = _parse_one(buf, closed)
        except _Incomplete:
            if closed:
                try:
                    status, headers, start = _head(buf)
                except (_Incomplete, ValueError):
                    break
                out.append(RawResponse(status, headers, buf[start:], buf))
            break
        except ValueError:
            break
        out.append(response)
    return out


def exchange(
    port: int,
    payload: bytes | list[bytes],
    *,
    host: str = "127.0.0.1",
    expect: int = 1,
    timeout: float = 5.0,
    linger: float = 0.2,
    pause: float = 0.0,
    half_close: float | None = None,
) -> Exchange:
    """Write ``payload`` (a list: pieces written ``pause`` seconds apart) while reading.

    Reading ends when the server closes; or once ``expect`` responses are complete and nothing
    more came for ``linger`` seconds; or after ``timeout`` seconds in all. With ``half_close``,
    the write side is shut down that many seconds after the last byte if no answer came yet,
    so that a server waiting for more of an incomplete request sees the end of input.
    """
    pieces = [payload] if isinstance(payload, bytes) else list(payload)
    result = Exchange()
    buf = bytearray()
    start = time.monotonic()
    deadline = start + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setblocking(False)
        pending = memoryview(pieces.pop(0)) if pieces else memoryview(b"")
        next_piece_at = 0.0
        written_at: float | None = None
        quiet_since: float | None = None
        shut = False
        while True:
            now = time.monotonic()
            if now >= deadline:
                result.timed_out = True
                break
            if not pending and pieces and now >= next_piece_at:
                pending = memoryview(pieces.pop(0))
            writing = bool(pending)
            if not writing and not pieces and written_at is None:
                written_at = now
            complete = len(parse_responses(bytes(buf), closed=False)) >= expect
            idle = quiet_since is not None and now - quiet_since >= linger
            if complete and not writing and not pieces and idle:
                break
            if (
                half_close is not None
                and not shut
                and written_at is not None
                and not buf
                and now - written_at >= half_close
            ):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                shut = True
            wait = min(0.05, deadline - now)
            readable, writable, _ = select.select([sock], [sock] if writing else [], [], wait)
            if writable and pending:
                try:
                    sent = sock.send(pending[: 256 * 1024])
                except BlockingIOError:
                    sent = 0
                except OSError:  # the server closed while we were still writing
                    result.unsent = len(pending) + sum(len(p) for p in pieces)
                    pending, pieces = memoryview(b""), []
                    sent = 0
                pending = pending[sent:]
                if not pending and pieces:
                    next_piece_at = time.monotonic() + pause
            if readable:
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:  # reset by the peer
                    result.closed = True
                    break
                if not chunk:
                    result.closed = True
                    break
                buf += chunk
                quiet_since = None
                if len(buf) > 16 * 2**20:
                    break  # bounded: no test needs more
            elif complete and quiet_since is None:
                quiet_since = now
    result.data = bytes(buf)
    result.responses = parse_responses(result.data, result.closed)
    return result


def read_status(data: bytes) -> int | None:
    """The status code of the first response in ``data``, if any."""
    try:
        return _head(data)[0]
    except (_Incomplete, ValueError):
        return None
