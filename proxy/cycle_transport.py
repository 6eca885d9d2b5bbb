"""The connection as uvicorn's request cycle sees it: writes, ``is_closing`` and a close that
is the listener's graceful one.

A response's head is held back until the next write or the end of the event loop's turn,
whichever comes first. uvicorn writes the head on ``http.response.start`` and the body on the
next message, two system calls and two TCP segments for an answer the forwarder has whole; the
head now leaves with the body's first bytes in one ``writev``. A streamed answer's head goes at
the end of the turn, before the first event is even awaited. The listener flushes it when an
answer completes (HEAD writes no body) and before anything it writes or closes on its own, so
nothing overtakes a held head. Measured in the benchmark (same run, interleaved, five rounds
each): 238 -> 231 us of CPU per small request, one system call less per answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class CycleTransport:
    """One per connection; ``hold_head`` is set when a request's cycle begins, so the first
    write of each response (its head, or a 100 Continue) is the one held."""

    __slots__ = ("_close", "_held", "_loop", "_write", "_writelines", "hold_head", "is_closing")

    def __init__(self, transport: asyncio.Transport, close: Callable[[], None]) -> None:
        self._write = transport.write
        self._writelines = transport.writelines
        self.is_closing = transport.is_closing
        self._close = close
        self._loop = asyncio.get_running_loop()
        self._held: bytes | None = None
        self.hold_head = False

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._writelines((held, data))  # one writev, no copy of the body
        elif self.hold_head:
            self.hold_head = False
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._write(data)

    def flush(self) -> None:
        """Write what is held; on a connection already closing it is dropped, as the
        transport would drop it."""
        held = self._held
        if held is not None:
            self._held = None
            if not self.is_closing():
                self._write(held)

    def close(self) -> None:
        self.flush()
        self._close()
