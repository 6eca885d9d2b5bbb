"""IdleCollector (proxy/garbage.py): cyclic garbage is collected once nothing is in flight, and
never while something is. A pure unit test on the running interpreter's collector."""

from __future__ import annotations

import asyncio
import gc
import weakref

from proxy.garbage import IDLE_THRESHOLD, IdleCollector


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycles(count: int) -> list[weakref.ref[Node]]:
    """``count`` pairs of objects that only a collection can free; weak references to watch."""
    watched = []
    for _ in range(count):
        a, b = Node(), Node()
        a.other, b.other = b, a
        watched.append(weakref.ref(a))
    return watched


def alive(watched: list[weakref.ref[Node]]) -> int:
    return sum(1 for ref in watched if ref() is not None)


def test_garbage_waits_while_busy_and_goes_once_idle() -> None:
    busy = [True]

    async def scenario() -> tuple[int, int, int]:
        collector = IdleCollector(lambda: busy[0], period=0.02)
        enabled = gc.isenabled()
        gc.disable()  # only the collector under test may collect
        try:
            collector.start()
            watched = cycles(IDLE_THRESHOLD)
            await asyncio.sleep(0.2)
            during = alive(watched)
            busy[0] = False
            for _ in range(100):
                await asyncio.sleep(0.02)
                if collector.collections:
                    break
            after = alive(watched)
            await collector.aclose()
            return during, after, collector.collections
        finally:
            if enabled:
                gc.enable()

    during, after, collections = asyncio.run(scenario())
    assert during == IDLE_THRESHOLD, "collected while a request was in flight"
    assert collections >= 1
    assert after == 0, f"{after} cycles left after the idle collection"


def test_an_idle_proxy_with_nothing_new_does_not_collect() -> None:
    async def scenario() -> int:
        gc.collect()
        collector = IdleCollector(lambda: False, period=0.02)
        collector.start()
        await asyncio.sleep(0.3)
        await collector.aclose()
        return collector.collections

    assert asyncio.run(scenario()) == 0


def test_closing_ends_the_task() -> None:
    async def scenario() -> bool:
        collector = IdleCollector(lambda: False, period=3600)
        collector.start()
        task = next(t for t in asyncio.all_tasks() if t.get_name().endswith("idle collector"))
        await collector.aclose()
        return task.done()

    assert asyncio.run(scenario())
