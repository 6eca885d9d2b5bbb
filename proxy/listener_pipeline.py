"""Pipelined requests, parsed only ``max_pipelined`` ahead of the one being answered, as a part
of listener.py's GuardedHttpProtocol (docs/security.md, "Resource bounds"): uvicorn parsed every
request of each read into memory. Past the depth reading stops, and a client that pipelines
more than _HOLD_LIMIT bytes beyond it is served what was parsed, then closed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from proxy.listener_limits import ListenerLimits

# llhttp cannot be paused from a callback, so input that may hold several requests is parsed
# in slices of one message each (a head; a body of known length; a chunked body up to its last
# chunk) and parsing stops at the pipeline depth. A read up to _SLICE bytes with nothing queued
# is parsed at once (the usual case).
_SLICE = 1024
# What a slice may still bring past the depth (a small read; a chunked body whose last chunk
# has an extension) before parsing stops for good: the rest is refused.
# A read of _SLICE bytes holds at most 16 requests of 64 bytes or more, as real ones are.
PIPELINE_SLACK = 8
# Pipelined input held, unparsed, while the depth is reached; more ends the connection.
_HOLD_LIMIT = 16 * 1024
_HEAD_START = re.compile(rb"[^\r\n]")


class PipelineFeed:
    """Feeding the parser one message at a time; GuardedHttpProtocol sets the state."""

    # The protocol's (uvicorn's HttpToolsProtocol and GuardedHttpProtocol's).
    transport: asyncio.Transport
    parser: Any
    flow: Any
    cycle: Any
    pipeline: Any
    limits: ListenerLimits
    _parse: Callable[[bytes | memoryview], None]
    _message_done: bool
    _in_head: bool
    _body_left: int
    _discarding: bool
    # This part's own.
    _held: bytes

    def _feed(self, data: bytes) -> None:
        """Parse ``data``; when it may hold several requests, one message at a time, holding
        back what lies past the pipeline depth."""
        end = len(data)
        if end <= _SLICE and not self.pipeline:
            self._parse(data)  # one small read: the usual case
            return
        view = memoryview(data)
        depth = self.limits.max_pipelined
        pos = 0
        while pos < end:
            if self._message_done and len(self.pipeline) >= depth:
                self._hold(view[pos:])
                return
            stop = self._slice_end(data, pos)
            self._parse(view[pos:stop])
            pos = stop
            if self._discarding or self.transport.is_closing() or self.parser.should_upgrade():
                # Closing, or the connection was upgraded (the rest is never read as HTTP).
                return

    def _slice_end(self, data: bytes, pos: int) -> int:
        """Where the next slice of ``data`` from ``pos`` ends: after the next head, after the
        current body, or a bounded guess."""
        if self._message_done:
            found = _HEAD_START.search(data, pos)  # blank lines first start no message
            if found is None:
                return len(data)
            pos = found.start()
        elif not self._in_head:
            if self._body_left > 0:
                return pos + self._body_left
            # Chunked: up to the end of the last chunk and its trailers when in sight (an early
            # cut inside chunk data that looks like them costs only another slice).
            if data.startswith(b"0\r\n", pos):
                after = pos + 1
            else:
                last = data.find(b"\r\n0\r\n", pos)
                if last < 0:
                    return len(data)
                after = last + 3
            end = data.find(b"\r\n\r\n", after)
            return end + 4 if end >= 0 else len(data)
        head_end = data.find(b"\r\n\r\n", pos, pos + _SLICE)
        return head_end + 4 if head_end >= 0 else pos + _SLICE

    def _hold(self, rest: bytes | memoryview) -> None:
        held = self._held + rest
        if len(held) > _HOLD_LIMIT:
            self._refuse_rest()
            return
        self._held = held
        self.flow.pause_reading()

    def _refuse_rest(self) -> None:
        """Too much pipelined input: answer what was parsed, then close."""
        self.limits.notices.warn(
            "pipelining",
            "a client pipelined more than %d requests and %d bytes beyond them: it gets the "
            "answers to those, then its connection is closed (FOUNDRY_PROXY_MAX_PIPELINED)",
            self.limits.max_pipelined,
            _HOLD_LIMIT,
        )
        self._held = b""
        self._discarding = True
        self.flow.pause_reading()
        if self.cycle is not None:
            self.cycle.keep_alive = False  # the newest parsed request ends the connection
