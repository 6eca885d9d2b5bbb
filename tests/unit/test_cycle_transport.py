"""CycleTransport (proxy/cycle_transport.py): a response's head leaves with the body's first
bytes in one call, or alone at the end of the event loop's turn; nothing is reordered or lost.
A pure unit test: a recording transport stands in for the socket."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from proxy.cycle_transport import CycleTransport


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", [data]))

    def writelines(self, data: tuple[bytes, ...]) -> None:
        self.calls.append(("writelines", list(data)))

    def is_closing(self) -> bool:
        return self.closing


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def make() -> tuple[CycleTransport, Recorder, list[str]]:
    sink = Recorder()
    closed: list[str] = []
    transport = CycleTransport(sink, lambda: closed.append("closed"))  # type: ignore[arg-type]
    return transport, sink, closed


@in_loop
async def test_head_and_body_written_in_one_turn_leave_together() -> None:
    transport, sink, _ = make()
    transport.hold_head = True
    transport.write(b"HEAD")
    assert sink.calls == []
    transport.write(b"BODY")
    assert sink.calls == [("writelines", [b"HEAD", b"BODY"])]
    transport.write(b"MORE")  # later writes of the same response go straight out
    await asyncio.sleep(0)
    assert sink.calls[1:] == [("write", [b"MORE"])]


@in_loop
async def test_a_head_alone_leaves_at_the_end_of_the_turn() -> None:
    transport, sink, _ = make()
    transport.hold_head = True
    transport.write(b"HEAD")
    await asyncio.sleep(0)  # a streamed answer: the first event is not there yet
    assert sink.calls == [("write", [b"HEAD"])]
    transport.write(b"EVENT")
    assert sink.calls[1:] == [("write", [b"EVENT"])]


@in_loop
async def test_only_the_first_write_of_each_response_is_held() -> None:
    transport, sink, _ = make()
    transport.write(b"no cycle began")
    assert sink.calls == [("write", [b"no cycle began"])]
    transport.hold_head = True
    transport.write(b"H1")
    transport.write(b"B1")
    transport.hold_head = True
    transport.write(b"H2")
    transport.write(b"B2")
    assert [b"".join(parts) for _, parts in sink.calls] == [b"no cycle began", b"H1B1", b"H2B2"]


@in_loop
async def test_close_writes_what_is_held_first() -> None:
    transport, sink, closed = make()
    transport.hold_head = True
    transport.write(b"HEAD")
    transport.close()
    assert sink.calls == [("write", [b"HEAD"])]
    assert closed == ["closed"]
    await asyncio.sleep(0)
    assert len(sink.calls) == 1  # the end-of-turn flush finds nothing left


@in_loop
async def test_a_head_held_for_a_connection_that_closed_is_dropped() -> None:
    transport, sink, _ = make()
    transport.hold_head = True
    transport.write(b"HEAD")
    sink.closing = True
    await asyncio.sleep(0)
    assert sink.calls == []
