"""The cycle collector tuned for serving: the startup heap frozen out of its sight, a young
generation that is collected less often under traffic, and a full collection when traffic
stops, so that cyclic garbage never waits for traffic that may not come.

Measured in the benchmark (BENCHMARKS.md, "The tail at c=32"; same runs, interleaved):

- A full collection walked every object of the process, ~64,000 of them made at startup
  (modules, classes, settings), and held the event loop for up to 100 ms: p99 was 4.5x p50
  at c=32; 1.9x with the startup heap frozen.
- At Python's young threshold of 700 net new objects, the requests in flight alone crossed it
  about 70 times a second: 1,627 young collections in a 24 s run took 0.66 s, ~8 us of each
  request; at 10,000, 153 took 0.035 s.
- A proxied request leaves no cyclic garbage (each one's objects are freed by reference
  counting; checked with ``gc.DEBUG_SAVEALL`` under load), but closed connections and ended
  Realtime sessions do. With the higher threshold an idle proxy never reached it and kept a
  Realtime flood's ~80 MB (tests/security/test_bounds_realtime.py), hence IdleCollector.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable

# Net new container objects before a young collection, under traffic (Python's default: 700).
YOUNG_THRESHOLD = 10_000
# What counts as garbage worth a collection once idle: Python's own young threshold.
IDLE_THRESHOLD = 700


def settle() -> None:
    """Once the proxy serves: collect, freeze what survives (the startup heap), raise the
    young threshold. Idempotent."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


class IdleCollector:
    """A task owned by the app's lifespan: every ``period`` seconds, when ``busy()`` says
    nothing is in flight and garbage may be pending, it runs a full collection. Idle means no
    request and no Realtime session, so the pause (a few ms: the startup heap is frozen)
    delays no one."""

    def __init__(self, busy: Callable[[], bool], period: float = 1.0) -> None:
        # busy: a request or Realtime session in flight (app.py)
        self._busy = busy
        self._period = period
        self._task: asyncio.Task[None] | None = None
        self.collections = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="foundry-proxy idle collector")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            young, older, oldest = gc.get_count()
            # Young collections since the last full one promoted survivors, some of which
            # may have died since; a young generation past Python's own threshold may hold
            # cycles. Either is worth the pause now that no one waits.
            pending = young >= IDLE_THRESHOLD or older > 0 or oldest > 0
            if pending and not self._busy():
                gc.collect()
                self.collections += 1
