"""The deadlines of an HTTP/1.1 connection (docs/security.md, "Resource bounds", "Slow
clients"), as a part of listener.py's GuardedHttpProtocol, and how it closes:

- the request head must arrive within ``head_timeout`` seconds (else 408). The deadline also
  runs from the first byte an idle keep-alive connection receives: llhttp skips blank lines
  between messages without starting one, and uvicorn resets its keep-alive timer on every
  byte, so a CRLF every few seconds kept a connection forever (slowloris);
- a request body must keep coming: each ``body_timeout`` window must bring at least
  ``body_min_rate`` bytes per second (else 408), unless the proxy itself stopped reading;
- an answer the client stops reading is abandoned after ``send_timeout`` seconds without
  progress, which ends the request and frees its concurrency slot;
- a connection closed while the client may still be sending is closed gracefully: the answer
  goes out, then a FIN, then input is discarded for up to LINGER_SECONDS (RFC 9112 section
  9.6), so that no reset destroys an answer (a 413, a 400) before the client reads it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.cycle_transport import CycleTransport
from proxy.listener_limits import ANSWERED_KEY, ListenerLimits, SendDeadline, cancelled
from proxy.replies import error_body

# How long input is read and discarded after the answer on a connection being closed while
# the client may still be sending (a body over the limit, a malformed request).
LINGER_SECONDS = 2.0


def reply(status: int, reason: str, code: str, message: str, extra: str = "") -> bytes:
    """A whole answer the listener makes itself, ending the connection."""
    body = error_body(status, code, message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionDeadlines(SendDeadline):
    """The timers of one connection and its closing; GuardedHttpProtocol sets the state."""

    # The protocol's (uvicorn's HttpToolsProtocol and GuardedHttpProtocol's).
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    flow: Any
    cycle: Any
    pipeline: Any
    limits: ListenerLimits
    head_timeout: float
    _in_head: bool
    _message_done: bool
    _head_bytes: int
    _held: bytes
    _discarding: bool
    _cycle_transport: CycleTransport | None
    # This part's own.
    _head_timer: asyncio.TimerHandle | None
    _body_timer: asyncio.TimerHandle | None
    _body_bytes: int
    _body_excused: bool
    _lingering: bool
    _linger_timer: asyncio.TimerHandle | None

    # -- the head deadline --------------------------------------------------------------------

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        self._head_timer = cancelled(self._head_timer)

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

    # -- the body deadline --------------------------------------------------------------------

    def _start_body_window(self) -> None:
        self._body_bytes = 0
        self._body_excused = self.flow.read_paused
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_window_end)

    def _stop_body_window(self) -> None:
        self._body_timer = cancelled(self._body_timer)

    def _body_window_end(self) -> None:
        self._body_timer = None
        if self._message_done or self._discarding or self.transport.is_closing():
            return
        limits = self.limits
        cycle = self.cycle
        wanted = max(1.0, limits.body_min_rate * limits.body_timeout)
        excused = (
            self._body_excused
            or self.flow.read_paused
            or (cycle is not None and cycle.waiting_for_100_continue)
        )
        if excused or self._body_bytes >= wanted:
            self._start_body_window()
            return
        limits.notices.warn(
            "body",
            "a request body brought %d bytes in %g s: request ended with 408 "
            "(FOUNDRY_PROXY_BODY_TIMEOUT=%g, FOUNDRY_PROXY_BODY_MIN_RATE=%d)",
            self._body_bytes,
            limits.body_timeout,
            limits.body_timeout,
            limits.body_min_rate,
        )
        if cycle is not None and cycle.response_complete:
            self._close()  # answered already (the body was being skipped): just end it
            return
        self._refuse(
            408,
            "Request Timeout",
            "request_timeout",
            f"the request body arrived slower than {limits.body_min_rate} bytes/s over "
            f"{limits.body_timeout:g} s",
        )

    # -- the send deadline (listener_limits.py) ------------------------------------------------

    # A client cut off: uvicorn's connection_lost marks its request disconnected and unblocks
    # its send(); the forwarder then sees the disconnect and closes the upstream request.
    _send_notice = (
        "send",
        "a client read nothing of its answer for %g s: connection closed and its request "
        "ended (FOUNDRY_PROXY_SEND_TIMEOUT)",
    )

    def _send_blocked(self) -> bool:
        return bool(self.flow.write_paused) and not self.transport.is_closing()

    # -- closing ------------------------------------------------------------------------------

    def _turn_away(self, open_now: int) -> None:
        limit = self.limits.max_connections
        self._in_head = False
        self.limits.notices.warn(
            "connections",
            "%d connections open: new connections are answered 503 and closed "
            "(FOUNDRY_PROXY_MAX_CONNECTIONS=%d)",
            open_now - 1,
            limit,
        )
        self.transport.write(
            reply(
                503,
                "Service Unavailable",
                "too_many_connections",
                f"foundry-proxy has {limit} connections open, its limit "
                "(FOUNDRY_PROXY_MAX_CONNECTIONS); retry shortly",
                "retry-after: 1\r\n",
            )
        )
        if open_now > 2 * limit:
            # Connections turned away linger too; past twice the limit they close at once.
            self.transport.close()
        else:
            self._linger()

    def _refuse(self, status: int, reason: str, code: str, message: str, extra: str = "") -> None:
        self._disarm()
        self._flush_head()
        if self.transport.is_closing() or self._lingering:
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.write(reply(status, reason, code, message, extra))
        elif not cycle.response_started:
            # The request is with the app, which has not answered yet (a bad chunk in its
            # body, say): answer for it, and let it see a disconnect from now on.
            cycle.disconnected = True
            cycle.scope[ANSWERED_KEY] = status
            cycle.message_event.set()
            self.transport.write(reply(status, reason, code, message, extra))
        self._close()

    def _flush_head(self) -> None:
        """A response head held for its body (cycle_transport.py) goes before anything the
        listener writes or closes on its own."""
        if self._cycle_transport is not None:
            self._cycle_transport.flush()

    def _close(self) -> None:
        """Close the connection; gracefully when the client may still be sending."""
        self._flush_head()
        if self.transport.is_closing() or self._lingering:
            return
        pending = (
            not self._message_done
            or (self._in_head and self._head_bytes > 0)
            or self._discarding
            or bool(self._held)
            or bool(self.pipeline)
        )
        if pending:
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        """Send what is buffered and a FIN, then discard input until the client closes or
        LINGER_SECONDS pass: closing a socket with unread input makes the kernel send a reset,
        and a reset destroys the answer in the client's buffers before it reads it."""
        transport = self.transport
        self._lingering = self._discarding = True
        self._held = b""
        self._disarm()
        self._stop_body_window()
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self._linger_end)

    def _linger_end(self) -> None:
        self._linger_timer = None
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # the client reads nothing either
        else:
            self.transport.close()
