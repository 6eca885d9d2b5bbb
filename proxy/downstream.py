"""The client side of an exchange: reading the request body and noticing a client that leaves.

ASGI delivers the request body and, after it, only ``http.disconnect``; these classes turn that
into a body the forwarder can send (kept whole when small, so it can be replayed) and into a
cancellation of the exchange when the client goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.types import Message, Receive

from proxy.budget import HeldBody

# A client that leaves is noticed at most this much later than it leaves (see Watch).
WATCH_AFTER = 0.05


class ClientGone(Exception):
    """The client disconnected before its request body was complete, or its body stopped
    coming: the listener ends a body slower than FOUNDRY_PROXY_BODY_MIN_RATE with 408 and
    from then on the exchange sees a disconnect (listener.py)."""


class TooLarge(Exception):
    """The request body is larger than max_body_bytes."""


class Watch:
    """Cancels the request's task when the client disconnects, so the upstream is closed.

    Started only once the request body has been read in full: from then on ``receive`` has
    nothing left to deliver but ``http.disconnect`` (ASGI HTTP spec). The watching task is
    created only if the exchange lasts longer than WATCH_AFTER: most non-streamed answers are
    done by then, and a task per request was a measurable share of the CPU per request.
    """

    __slots__ = ("finished", "gone", "owner", "receive", "task", "timer")

    def __init__(self, receive: Receive, owner: asyncio.Task[object]) -> None:
        self.receive = receive
        self.owner = owner
        self.finished = False
        self.gone = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._spawn)

    def _spawn(self) -> None:
        if not self.finished:
            self.task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        if not self.finished:
            self.gone = True
            self.owner.cancel()

    def stop(self) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()


class Body:
    """The request body: buffered when small (then it can be replayed), else streamed.

    ``held`` counts the bytes held in memory against the body budget (budget.py): the listener
    adds them as they arrive; a streamed body drops them as they go on upstream."""

    __slots__ = ("data", "gone", "held", "length", "max_size", "prefix", "size", "too_large")

    def __init__(self, length: int | None, max_size: int, held: HeldBody | None = None) -> None:
        self.held = held
        self.data: bytes | None = None
        self.prefix: list[bytes] = []
        self.length = length
        self.max_size = max_size
        self.size = 0
        self.gone = False
        self.too_large = False

    def _take(self, message: Message) -> bytes:
        if message["type"] == "http.disconnect":
            self.gone = True
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        self.size += len(chunk)
        if self.size > self.max_size:
            self.too_large = True
            raise TooLarge
        return chunk

    async def read_start(self, receive: Receive, replay_limit: int) -> None:
        """Read up to ``replay_limit`` bytes; a body that ends by then is kept whole."""
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunk = self._take(message)
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                self.data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                return
            if self.size > replay_limit:
                self.prefix = chunks
                return

    async def stream(self, receive: Receive, watch: Watch) -> AsyncIterator[bytes]:
        """The rest of a body too large to keep, as the client sends it."""
        held = self.held
        prefix, self.prefix = self.prefix, []
        for chunk in prefix:
            yield chunk
            if held is not None:
                held.drop(len(chunk))
        del prefix
        while True:
            message = await receive()
            chunk = self._take(message)
            if chunk:
                yield chunk
                if held is not None:
                    held.drop(len(chunk))
            if not message.get("more_body", False):
                watch.start()
                return
