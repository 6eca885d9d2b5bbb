"""A fault-injecting TCP proxy, and a raw-bytes upstream, for upstream-fault tests.

``FaultProxy`` listens on 127.0.0.1 and relays bytes to a target host:port, breaking the
connection on purpose: latency, a bandwidth cap, a close, an RST (``SO_LINGER`` 0) or a stall
after N bytes from the upstream, a refused or a black-holed connection. ``RawServer`` answers
every request with exact bytes (bad status lines, NUL bytes, conflicting Content-Lengths).

Both run on their own event loop in a daemon thread (like ``ServerThread``), so tests drive
them from blocking code. Knobs are plain attributes: set them from the test thread at any time;
a connection reads them once, when it is accepted (``drop()`` closes the connections a client
keeps pooled, so its next request sees the new knobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass, field
from typing import Any

_CHUNK = 65536
_FAULTS = ("close", "reset", "stall")


class _LoopServer:
    """A TCP server on 127.0.0.1:0 with its own loop thread, tracking every connection."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # drop() or stop(); end quietly (3.11's start_server callback chokes on a
            # cancelled connection task).
            pass
        finally:
            self._tasks.discard(task)
            await _close(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _cancel_all(self, every: bool = False) -> None:
        me = asyncio.current_task()
        tasks = [t for t in (asyncio.all_tasks() if every else self._tasks) if t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def drop(self) -> None:
        """Close every open connection (both sides)."""
        self._call(self._cancel_all())

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            await self._cancel_all(every=True)
            await self._server.wait_closed()

        if self._loop.is_closed():
            return
        self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    writer.close()
    with contextlib.suppress(OSError, asyncio.CancelledError):
        await writer.wait_closed()


@dataclass
class Conn:
    """One accepted connection, for tests to inspect."""

    bytes_up: int = 0
    bytes_down: int = 0
    #: What the upstream sent (the first 1 MiB), to find byte offsets for the next run.
    down: bytearray = field(default_factory=bytearray)
    #: Who ended it: "client" (EOF from the client), "upstream", "close", "reset", "stop".
    ended_by: str = ""


class FaultProxy(_LoopServer):
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.latency = 0.0  # seconds added to every byte's trip, each direction
        self.bandwidth: float | None = None  # bytes per second, each direction
        # The *_after faults fire when upstream byte N+1 arrives: the client gets exactly N.
        self.close_after: int | None = None
        self.reset_after: int | None = None
        self.stall_after: int | None = None  # then forward nothing more, keep both sockets
        self.refuse = False  # accept, then close at once
        self.blackhole = False  # accept, discard what arrives, never connect or answer
        self.connections = 0
        self.open_connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.conns: list[Conn] = []
        super().__init__()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn()
        self.conns.append(conn)
        self.connections += 1
        self.open_connections += 1
        knobs = (self.latency, self.bandwidth)
        limits = [
            (self.stall_after, "stall"),
            (self.reset_after, "reset"),
            (self.close_after, "close"),
        ]
        fault = min(((n, a) for n, a in limits if n is not None), default=None)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.refuse:
                conn.ended_by = "close"
                return
            if self.blackhole:
                while await reader.read(_CHUNK):
                    pass
                conn.ended_by = "client"
                return
            up_reader, upstream = await asyncio.open_connection(*self.target)
            pumps = {
                asyncio.ensure_future(self._pump(reader, upstream, conn, knobs, None, False)): (
                    "client"
                ),
                asyncio.ensure_future(self._pump(up_reader, writer, conn, knobs, fault, True)): (
                    "upstream"
                ),
            }
            try:
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                # A fault the proxy injected wins over the EOF it causes on the other side.
                ends = sorted(
                    (t.result() or pumps[t]) if t.exception() is None else pumps[t] + " error"
                    for t in done
                )
                conn.ended_by = next((e for e in ends if e in _FAULTS), ends[0])
            finally:
                for task in pumps:
                    task.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:
            conn.ended_by = conn.ended_by or "stop"
            raise
        finally:
            self.open_connections -= 1
            await _close(upstream)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        conn: Conn,
        knobs: tuple[float, float | None],
        fault: tuple[int, str] | None,
        down: bool,
    ) -> str | None:
        latency, bandwidth = knobs
        size = max(1, min(_CHUNK, int(bandwidth / 20))) if bandwidth else _CHUNK
        async with contextlib.aclosing(_delayed(src, size, latency)) as chunks:
            async for data in chunks:
                action = await self._forward(data, dst, conn, fault, down)
                if action is not None:
                    return action
                if bandwidth:
                    await asyncio.sleep(len(data) / bandwidth)
        return None

    async def _forward(
        self,
        data: bytes,
        dst: asyncio.StreamWriter,
        conn: Conn,
        fault: tuple[int, str] | None,
        down: bool,
    ) -> str | None:
        """Write one chunk (cut at a fault's byte limit); the fault fired, if any."""
        action = None
        if fault is not None and conn.bytes_down + len(data) > fault[0]:
            data, action = data[: fault[0] - conn.bytes_down], fault[1]
        dst.write(data)
        await dst.drain()
        if down:
            conn.bytes_down += len(data)
            self.bytes_down += len(data)
            conn.down += data[: max(0, (1 << 20) - len(conn.down))]
        else:
            conn.bytes_up += len(data)
            self.bytes_up += len(data)
        if action == "stall":
            await asyncio.Event().wait()  # until the client leaves (or drop/stop)
        elif action == "reset":
            sock = dst.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            dst.transport.abort()
        return action


async def _delayed(
    src: asyncio.StreamReader, size: int, latency: float
) -> AsyncGenerator[bytes, None]:
    """The chunks read from ``src``, each released ``latency`` seconds after it arrived (a
    pipeline, like a long link: the delays do not add up over a stream)."""
    if not latency:
        while data := await src.read(size):
            yield data
        return
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes | BaseException]] = asyncio.Queue()

    async def read() -> None:
        try:
            while data := await src.read(size):
                queue.put_nowait((loop.time() + latency, data))
            queue.put_nowait((loop.time() + latency, b""))
        except OSError as exc:
            queue.put_nowait((loop.time() + latency, exc))

    reader = asyncio.ensure_future(read())
    try:
        while True:
            due, item = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            yield item
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


class RawServer(_LoopServer):
    """An upstream that answers every request with ``response``, byte for byte."""

    def __init__(self, response: bytes = b"") -> None:
        self.response = response
        #: Keep the connection open after answering (a client must drop it, not reuse it).
        self.hold = True
        self.requests = 0
        super().__init__()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        writer.write(self.response)
        await writer.drain()
        while self.hold and await reader.read(_CHUNK):
            pass
