"""The HTTP/1.1 listener: uvicorn's httptools protocol with the two limits uvicorn lacks.

uvicorn has no deadline for reading a request head (its keep-alive timeout runs only between
requests, and any byte resets it), so a connection that sends nothing, or a header a byte at a
time, lives forever (slowloris; test-plan finding 4). And the httptools parser puts no limit on
the size of a request head. This subclass adds both: the head must arrive within
``head_timeout`` seconds (else 408 and close) and within ``max_header_bytes`` (else 431 and
close).

The parser is pinned to httptools (llhttp): it refuses obs-fold, conflicting Content-Length and
malformed chunked framing (test-plan finding 3); Content-Length together with
Transfer-Encoding is refused by the forwarder (rewrite.py). ``parser_in_use`` asserts at
startup that this is the parser in use.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httptools
from uvicorn import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("foundry_proxy")


def parser_in_use() -> str:
    """The parser's name and version, for the startup log; raises if it is not httptools."""
    if not issubclass(GuardedHttpProtocol, HttpToolsProtocol):  # pragma: no cover
        raise RuntimeError("foundry-proxy's listener must use uvicorn's httptools protocol")
    return f"httptools {httptools.__version__} (llhttp)"


def _reply(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-foundry-proxy-error: {code}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a request-head deadline and a request-head size limit, read from
    the server's ProxyConfig (uvicorn makes one protocol instance per connection)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout: float = getattr(self.config, "head_timeout", 10.0)
        self.max_header_bytes: int = getattr(self.config, "max_header_bytes", 64 * 1024)
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0  # bytes received since the head began (reads, coarse)
        self._head_size = 0  # bytes of the head parsed so far (exact)
        self._oversized = False

    # A connection that never sends a byte is also a head that never arrives.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a head followed by its body in one read is fine; a head still
        # incomplete after this many bytes is not.
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse(
                431,
                "Request Header Fields Too Large",
                "header_too_large",
                f"the request head is larger than {self.max_header_bytes} bytes",
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = self._head_size = 0
        self._arm()

    # A head that arrives whole in one read is measured by the parser's callbacks; raising
    # from one stops the parser, and uvicorn answers through send_400_response (below).
    def on_url(self, url: bytes) -> None:
        self._grow(len(url))
        if not self.url and not url.startswith(b"/"):
            # Absolute-form ("http://host/x"), authority-form (CONNECT) and "*" targets: a
            # reverse proxy serves origin-form only (RFC 9112 section 3.2), and a target naming
            # another host must never look like a path of ours (test-plan A6, A7).
            raise ValueError("request target is not in origin form")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _grow(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.max_header_bytes:
            self._oversized = True
            raise ValueError("request head too large")

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to anything the parser refused, in the proxy's error shape.
        if self._oversized:
            self._refuse(
                431,
                "Request Header Fields Too Large",
                "header_too_large",
                f"the request head is larger than {self.max_header_bytes} bytes",
            )
            return
        self._refuse(400, "Bad Request", "invalid_request", "malformed or unsupported request")

    def _should_upgrade(self) -> bool:
        # A WebSocket handshake is a GET (RFC 6455 section 4.1); uvicorn would hand any method
        # to the WebSocket protocol, which then never answers a POST.
        return super()._should_upgrade() and self.parser.get_method() == b"GET"

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        other_upgrade = self.parser.should_upgrade() and not self._should_upgrade()
        if other_upgrade and any(
            (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding"
            for name, value in self.headers
        ):
            # The parser stops at an upgrade head and uvicorn feeds it nothing more, so a body
            # would be lost while the request went upstream without it. Refuse (B25).
            raise ValueError("protocol upgrade with a request body")
        super().on_headers_complete()
        if other_upgrade and self.cycle is not None:
            # Served as a plain request (Upgrade is hop-by-hop and not forwarded); bytes after
            # the head are never read, so the connection must end with this response.
            self.cycle.keep_alive = False

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head:
            return
        if self.cycle is None or self.cycle.response_complete:
            self._refuse(
                408,
                "Request Timeout",
                "request_timeout",
                f"the request head did not arrive within {self.head_timeout:g} s",
            )
        elif not self.transport.is_closing():
            # A pipelined head trickling in behind a response still being sent.
            self.transport.close()

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.write(_reply(status, reason, code, message))
        elif not cycle.response_started:
            # The request is with the app, which has not answered yet (a bad chunk in its
            # body, say): answer for it, and let it see a disconnect from now on.
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(_reply(status, reason, code, message))
        self.transport.close()


class ProxyConfig(Config):
    """uvicorn's Config plus the listener's limits; module-level, so it pickles for the
    worker processes of ``--workers``."""

    def __init__(
        self,
        app: Any,
        *,
        head_timeout: float,
        max_header_bytes: int,
        ws_max_size: int = 16 * 1024 * 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, http=GuardedHttpProtocol, ws_max_size=ws_max_size, **kwargs)
        self.head_timeout = head_timeout
        self.max_header_bytes = max_header_bytes
