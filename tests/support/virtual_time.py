"""An asyncio event loop on virtual time, for unit tests of code that waits.

The loop's clock starts at 0 and moves only when every task is waiting for a timer: it then
jumps to the earliest one instead of sleeping. ``asyncio.sleep``, ``asyncio.timeout`` and
``call_later`` all read it, so a test of backoffs, deadlines and refresh schedules runs in
microseconds of real time and always sees the same instants, however busy the machine is.

Only for code that does no real I/O: a loop with nothing ready and no timer would wait for ever
on a real loop, and raises here instead (the test would hang).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that, asked to wait, moves the virtual clock on instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("every task is waiting and no timer is set: the test would hang")
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual: see the module's docstring."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


class LoopClock:
    """The two clocks TokenProvider reads (proxy.credentials.provider.Clock), on the running
    loop's time. ``jump`` moves the wall clock alone, as a laptop waking from sleep sees it."""

    def __init__(self, wall_start: float = 1_700_000_000.0) -> None:
        self.wall_start = wall_start
        self.jump = 0.0

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def time(self) -> float:
        return self.wall_start + self.monotonic() + self.jump


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on a VirtualTimeLoop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)
