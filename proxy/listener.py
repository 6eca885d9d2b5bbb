"""The HTTP/1.1 listener: uvicorn's httptools protocol with the bounds uvicorn lacks.

Every resource a connection holds has a limit and a deadline (docs/security.md, "Resource
bounds"); ``ListenerLimits`` (listener_limits.py) carries them, from the settings. Here:

- the request head must arrive within ``max_header_bytes`` (else 431); its deadline, the body's
  minimum rate, the send deadline and the graceful close are listener_deadlines.py's;
- at most ``max_connections`` connections; more are answered 503 and closed;
- pipelined requests are parsed only ``max_pipelined`` ahead of the one being answered
  (listener_pipeline.py);
- request-body bytes held in memory beyond each request's first 16 KiB come out of one budget
  per process (budget.py; FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES), counted as the parser hands
  them over (listener_budget.py): a request that finds it spent is answered 503 and closed;
- trailer fields of a chunked body are dropped (RFC 9112 section 7.1.2 forbids merging them
  into the header section; uvicorn appended them to the request's headers) and bounded like
  a head;
- a request target is origin-form, or absolute-form naming this proxy, which becomes
  origin-form; anything a forward proxy is sent is refused (listener_target.py).

The parser is pinned to httptools (llhttp): it refuses obs-fold, conflicting Content-Length and
malformed chunked framing (docs/security.md, "HTTP parsers"); Content-Length together with
Transfer-Encoding is refused by the forwarder (rewrite.py). ``parser_in_use`` asserts at
startup that this is the parser in use.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from proxy.budget import BUDGET_KEY, BodyBudget, HeldBody
from proxy.cycle_transport import CycleTransport
from proxy.listener_budget import HeldBodies, RequestCycle
from proxy.listener_deadlines import ConnectionDeadlines
from proxy.listener_limits import ListenerLimits, cancelled
from proxy.listener_pipeline import PIPELINE_SLACK, PipelineFeed
from proxy.listener_target import TargetForms, not_a_forward_proxy


def parser_in_use() -> str:
    """The parser's name and version, for the startup log; raises if it is not httptools."""
    if not issubclass(GuardedHttpProtocol, HttpToolsProtocol):  # pragma: no cover
        raise RuntimeError("foundry-proxy's listener must use uvicorn's httptools protocol")
    return f"httptools {httptools.__version__} (llhttp)"


class GuardedHttpProtocol(
    HttpToolsProtocol, PipelineFeed, ConnectionDeadlines, TargetForms, HeldBodies
):
    """HttpToolsProtocol with the bounds of ListenerLimits, read from the server's config
    (uvicorn makes one protocol instance per connection)."""

    # A connection's state, this class's and its parts', lives in slots. uvicorn sets 27
    # attributes in the instance dict; CPython shares a dict's keys among a class's instances
    # only up to 30 of them, and these 29 more gave every connection a table of its own (1,584
    # bytes against 288 shared, plus 232 for the slots). Measured (bench hold, 4 runs each):
    # 1,000 open streams peak at 97.6-97.9 MB against 99.2-99.6 (issue 17).
    __slots__ = (
        "_body_bytes",
        "_body_excused",
        "_body_left",
        "_body_timer",
        "_budget",
        "_chunk_empty",
        "_cycle_transport",
        "_cycles",
        "_discarding",
        "_head_bytes",
        "_head_size",
        "_head_timer",
        "_held",
        "_held_bodies",
        "_held_body",
        "_in_head",
        "_linger_timer",
        "_lingering",
        "_message_done",
        "_overflow",
        "_oversized",
        "_send_left",
        "_send_timer",
        "_target_refused",
        "_trailer_partial",
        "_trailer_size",
        "head_timeout",
        "limits",
        "max_header_bytes",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits = ListenerLimits.of(self.config)
        self.head_timeout = limits.head_timeout
        self.max_header_bytes = limits.max_header_bytes
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # a head is awaited or being parsed
        self._message_done = True  # no message in progress (none yet, or the last one ended)
        self._overflow = False  # pipelined past depth and slack: parsing stopped
        self._body_left = 0  # Content-Length bytes of the current body not parsed yet
        self._head_bytes = 0  # bytes received since the head began (reads, coarse)
        self._head_size = 0  # bytes of the head parsed so far (exact)
        self._oversized = ""  # what grew past max_header_bytes: the head, or the trailers
        self._target_refused = False  # the target names another server (a forward proxy's)
        self._chunk_empty = False  # a chunk header parsed and no data since: trailers follow
        self._trailer_size = 0  # bytes of the trailer fields parsed so far (exact)
        self._trailer_partial = 0  # bytes of a trailer field httptools holds until it ends
        self._held = b""  # pipelined input past the depth, parsed once answers catch up
        self._discarding = False  # input is read and dropped from now on
        self._lingering = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_bytes = 0  # body bytes in the current window
        self._body_excused = False  # the proxy stopped reading during the window
        self._send_timer: asyncio.TimerHandle | None = None
        self._send_left = 0  # bytes the client had not taken at the last send check
        self._cycle_transport: CycleTransport | None = None
        # The app's request-body budget, from the lifespan state (app.py); the body of the
        # request being parsed, and those of requests not answered yet (pipelined).
        budget = self.app_state.get(BUDGET_KEY)
        self._budget = budget if isinstance(budget, BodyBudget) else None
        self._held_body: HeldBody | None = None
        self._held_bodies: list[tuple[RequestCycle, HeldBody]] = []
        # Every request parsed and not answered yet, the one being answered included: uvicorn
        # keeps only the newest, so a disconnect would leave the running one writing on.
        self._cycles: list[RequestResponseCycle] = []

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._cycle_transport = CycleTransport(transport, self._close)
        open_now = len(self.connections)
        if open_now > self.limits.max_connections:
            self._turn_away(open_now)
            return
        # A connection that never sends a byte is also a head that never arrives.
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_body_window()
        self._stop_send_check()
        self._linger_timer = cancelled(self._linger_timer)
        self._held = b""
        self._release_all()
        for cycle in self._cycles:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self._cycles = []
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol takes the connection over: none of our timers concern it.
        self._disarm()
        self._stop_body_window()
        super().handle_websocket_upgrade()

    # -- input --------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._held:
            self._hold(data)  # uvicorn resumed reading (a receive() call): keep the order
            return
        if (
            self._message_done
            and not self._in_head
            and (self.cycle is None or self.cycle.response_complete)
        ):
            # Bytes on an idle keep-alive connection: a head begins, or blank lines that start
            # no message. Either way the head deadline runs from here.
            self._in_head = True
            self._head_bytes = 0
            self._arm()
        self._feed(data)
        if (
            not self._message_done
            and not self._in_head
            and self._body_timer is None
            and not self._discarding
        ):
            self._start_body_window()

    def _parse(self, data: bytes | memoryview) -> None:
        """uvicorn's data_received with the head and trailer bounds, and the pipeline's hard
        stop (which is no malformed request)."""
        if self._in_head:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._overflow:
                self._refuse_rest()
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        # Checked after parsing: a head followed by its body in one read is fine; a head still
        # incomplete after this many bytes is not.
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._too_large("request head")
        elif self._chunk_empty:
            # After a chunk's header and no data since: in the last chunk's trailer section,
            # or before a chunk's data. httptools hands a trailer field over (on_header,
            # counted there) only once the next one begins, and holds it until then: this
            # read's last line, ended or not, with the bytes of earlier reads when it began
            # in one. (Before a chunk's data, that line is the chunk's header: a few bytes.)
            tail = memoryview(data)[-(self.max_header_bytes + 1) :]
            ended = bool(tail) and tail[-1] == 0x0A
            line_start = bytes(tail[: len(tail) - ended]).rfind(b"\n") + 1
            if line_start:
                self._trailer_partial = len(tail) - line_start
            else:
                self._trailer_partial += len(tail)
            if self._trailer_size + self._trailer_partial > self.max_header_bytes:
                self._too_large("trailer section")

    def _too_large(self, what: str) -> None:
        self._refuse(
            431,
            "Request Header Fields Too Large",
            "header_too_large",
            f"the {what} is larger than {self.max_header_bytes} bytes",
        )

    def on_response_complete(self) -> None:
        # An answer to HEAD writes no body to carry its held head out: send it now, before
        # anything this connection writes next (cycle_transport.py).
        if self._cycle_transport is not None:
            self._cycle_transport.flush()
        if self._held_bodies:
            self._release_answered()
        if self._lingering:
            self.server_state.total_requests += 1
            return
        super().on_response_complete()
        if self._discarding:
            self.flow.pause_reading()  # nothing more will be parsed
        elif self._held and not self.transport.is_closing():
            held, self._held = self._held, b""
            self._feed(held)

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if len(self.pipeline) >= self.limits.max_pipelined + PIPELINE_SLACK:
            self._overflow = True
            raise ValueError("pipelined past the depth")  # stops the parser for good
        super().on_message_begin()
        self._in_head = True
        self._message_done = False
        self._head_bytes = self._head_size = 0
        self._arm()

    # A head that arrives whole in one read is measured by the parser's callbacks; raising
    # from one stops the parser, and uvicorn answers through send_400_response (below).
    def on_url(self, url: bytes) -> None:
        self._grow(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            # A trailer field: never one of the request's header fields (RFC 9112 section
            # 7.1.2), so it can neither carry an inbound key nor reach the upstream. Dropped,
            # and bounded like a head however the section arrives (one read or many).
            self._trailer_size += len(name) + len(value) + 4
            self._trailer_partial = 0
            if self._trailer_size > self.max_header_bytes:
                self._oversized = "trailer section"
                raise ValueError("trailer section too large")
            return
        self._grow(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _grow(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.max_header_bytes:
            self._oversized = "request head"
            raise ValueError("request head too large")

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to anything the parser refused, in the proxy's error shape.
        if self._target_refused:
            self._refuse(
                400, "Bad Request", "not_a_forward_proxy", not_a_forward_proxy(self.server)
            )
            return
        if self._oversized:
            self._too_large(self._oversized)
            return
        self._refuse(400, "Bad Request", "invalid_request", "malformed or unsupported request")

    def _should_upgrade(self) -> bool:
        # A WebSocket handshake is a GET (RFC 6455 section 4.1); uvicorn would hand any method
        # to the WebSocket protocol, which then never answers a POST.
        return super()._should_upgrade() and self.parser.get_method() == b"GET"

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        self._to_origin_form()
        other_upgrade = self.parser.should_upgrade() and not self._should_upgrade()
        if other_upgrade and any(
            (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding"
            for name, value in self.headers
        ):
            # The parser stops at an upgrade head and uvicorn feeds it nothing more, so a body
            # would be lost while the request went upstream without it. Refuse (B25).
            raise ValueError("protocol upgrade with a request body")
        previous = self.cycle
        super().on_headers_complete()
        self._body_left = 0
        chunked = False
        for name, value in self.headers:
            if name == b"content-length":
                self._body_left = int(value) if value.isdigit() else 0
            elif name == b"transfer-encoding":
                chunked = True
        cycle = self.cycle
        transport = self._cycle_transport
        if cycle is not previous and cycle is not None and transport is not None:
            self._cycles = [c for c in self._cycles if not c.response_complete]
            self._cycles.append(cycle)
            cycle.transport = transport  # type: ignore[assignment]
            transport.hold_head = True
            self._hold_body(cycle, bool(self._body_left or chunked))
            if other_upgrade:
                # Served as a plain request (Upgrade is hop-by-hop and not forwarded); bytes
                # after the head are never read, so the connection must end with this response.
                cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        self._body_left -= len(body)
        self._body_bytes += len(body)
        self._chunk_empty = False
        self._count_body(len(body))
        if self._lingering:
            return  # refused (over the budget, or a bad chunk earlier in this read): not kept
        super().on_body(body)
        if self.flow.read_paused:
            self._body_excused = True  # the app is not taking the body: not the client's fault

    def on_chunk_header(self) -> None:
        self._chunk_empty = True
        self._trailer_size = self._trailer_partial = 0

    def on_chunk_complete(self) -> None:
        self._chunk_empty = False

    def on_message_complete(self) -> None:
        self._message_done = True
        self._chunk_empty = False
        self._stop_body_window()
        super().on_message_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._start_send_check()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_send_check()


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
