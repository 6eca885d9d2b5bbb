"""Sending an emulated stream: server-sent events paced like a model's tokens, stopped as soon
as the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from starlette.types import Receive, Send

from proxy.emulator.wire import EmuRequest, Headers


class Observer(Protocol):
    """What the emulator tells about a stream (the tests' fake journals through these)."""

    def on_event(self, request: EmuRequest, data: bytes) -> None: ...
    def on_complete(self, request: EmuRequest) -> None: ...
    def on_disconnect(self, request: EmuRequest) -> None: ...


async def send_events(
    request: EmuRequest,
    events: list[bytes],
    timing: tuple[float, float],
    headers: Headers,
    observer: Observer,
    receive: Receive,
    send: Send,
) -> None:
    """``timing``: (delay before the first event, delay between events)."""
    first, between = timing
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        observer.on_disconnect(request)
        gone.set()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        if first:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), first)
        if gone.is_set():
            return
        head = [(b"content-type", b"text/event-stream; charset=utf-8"), *headers]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        observer.on_event(request, b"")
        for index, event in enumerate(events):
            if index and between:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), between)
            if gone.is_set():
                return
            await send({"type": "http.response.body", "body": event, "more_body": True})
            observer.on_event(request, event)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        observer.on_complete(request)
    finally:
        watcher.cancel()
        # Waited for, not awaited: its cancellation is not this task's to raise.
        await asyncio.wait([watcher])
