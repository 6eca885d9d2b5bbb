"""Listeners for security tests: hosts the proxy must never reach, and a scripted upstream.

``Evil`` counts every connection and request it gets (any hit fails a test). ``EvilListeners``
runs one on 127.0.0.2 and one on 127.0.0.3. ``ScriptedUpstream`` is a small raw ASGI upstream
whose answers are chosen by path, for response-side cases the emulator does not play
(gzip with Content-Length, cookies, redirects, hop-by-hop fields on the way back).
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from tests.fakes.serve import ServerThread


class Evil:
    """A listener that must never be reached: every request (any scope) is recorded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hits: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        with self._lock:
            self.hits.append(f"{scope.get('method', 'WS')} {scope.get('raw_path', b'')!r}")
        if scope["type"] == "http":
            body = b"evil"
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})


class EvilListeners:
    """Evil listeners on 127.0.0.2 and 127.0.0.3 (Linux routes all of 127/8 to lo)."""

    HOSTS = ("127.0.0.2", "127.0.0.3")

    def __init__(self) -> None:
        self.apps = [Evil() for _ in self.HOSTS]
        self.servers = [
            ServerThread(app, host=host) for app, host in zip(self.apps, self.HOSTS, strict=True)
        ]

    def start(self) -> EvilListeners:
        for server in self.servers:
            server.start()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    @property
    def hits(self) -> list[str]:
        return [h for app in self.apps for h in app.hits]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def authorities(self) -> list[str]:
        return [f"{s.host}:{s.port}" for s in self.servers]


class TcpCounter:
    """A bare TCP listener that records every connection and its first bytes, then closes it.

    For proxies (HTTPS_PROXY, ALL_PROXY): a CONNECT never reaches an ASGI app, a socket does.
    """

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.connections: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TcpCounter:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(0.5)
                first = b""
                with contextlib.suppress(OSError):
                    first = conn.recv(4096)
                self.connections.append(first)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@dataclass
class Seen:
    method: str
    raw_path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


GZIP_PLAIN = b'{"answer": "' + b"compressible " * 200 + b'"}'
GZIP_BODY = gzip.compress(GZIP_PLAIN, mtime=0)


class ScriptedUpstream:
    """An upstream whose answer depends on the path's last segment; journals every request.

    - ``.../gzip``: gzip bytes with ``Content-Encoding: gzip`` and their own Content-Length.
    - ``.../cookie``: ``Set-Cookie: session=<query>``.
    - ``.../redirect/<status>``: that status with ``Location:`` the (decoded) query ``to``.
    - ``.../hop``: hop-by-hop and per-hop fields plus the ones the client needs, chunked.
    - anything else: a small JSON echo.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.journal: list[Seen] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        raw_path = scope["raw_path"].decode("latin-1")
        query = scope["query_string"].decode("latin-1")
        seen = Seen(
            scope["method"],
            raw_path,
            query,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            body,
        )
        with self._lock:
            self.journal.append(seen)
        last = raw_path.rsplit("/", 1)[-1]
        headers: list[tuple[bytes, bytes]]
        if last == "gzip":
            headers = [
                (b"content-type", b"application/json"),
                (b"content-encoding", b"gzip"),
                (b"content-length", str(len(GZIP_BODY)).encode()),
            ]
            await self._answer(send, 200, headers, GZIP_BODY)
        elif last == "cookie":
            value = query.encode() or b"s"
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"2"),
                (b"set-cookie", b"session=" + value + b"; Path=/"),
                (b"set-cookie2", b"legacy=" + value),
            ]
            await self._answer(send, 200, headers, b"{}")
        elif raw_path.rsplit("/", 2)[-2:-1] == ["redirect"]:
            status = int(last)
            target = parse_qs(query).get("to", ["/"])[0]
            text = f"moved to {target}".encode()
            headers = [
                (b"location", target.encode()),
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(text)).encode()),
            ]
            await self._answer(send, status, headers, text)
        elif last == "hop":
            headers = [
                (b"content-type", b"application/json"),
                (b"connection", b"x-s"),
                (b"x-s", b"secret-hop"),
                (b"keep-alive", b"timeout=5"),
                (b"upgrade", b"h2c"),
                (b"proxy-authenticate", b"Basic realm=x"),
                (b"trailer", b"x-checksum"),
                (b"set-cookie", b"session=abc"),
                (b"alt-svc", b'h3=":443"; ma=86400'),
                (b"retry-after", b"7"),
                (b"x-ratelimit-remaining-requests", b"42"),
                (b"x-ratelimit-remaining-tokens", b"4200"),
                (b"apim-request-id", b"apim-1"),
                (b"x-request-id", b"req-1"),
            ]
            # No Content-Length: uvicorn frames this with Transfer-Encoding: chunked.
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"{", "more_body": True})
            await send({"type": "http.response.body", "body": b"}", "more_body": False})
        else:
            text = b'{"ok": true}'
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(text)).encode()),
            ]
            await self._answer(send, 200, headers, text)

    @staticmethod
    async def _answer(
        send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
