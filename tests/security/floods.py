"""Attack drivers for the resource-bound tests, and the ordinary client that must keep working.

Every driver is bounded in time and in count, talks to loopback only, and closes every socket it
opened whatever happens. Figures (RSS, fds) are read from the proxy's /proc entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field

import httpx2

from tests.load._support import fd_count, rss_kb
from tests.support.chat import CHAT, CHAT_PATH
from tests.support.rawsock import json_head, request


def eventually(predicate: Callable[[], object], timeout: float = 5) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass (a log line the proxy
    wrote may take a moment to reach the test's reader)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@dataclass
class Figures:
    """The proxy process's RSS (KiB) and open fds: before an attack, at its worst, after."""

    pid: int
    rss_before: int = 0
    fds_before: int = 0
    rss_peak: int = 0
    fds_peak: int = 0
    rss_after: int = 0
    fds_after: int = 0

    def before(self) -> None:
        self.rss_before = self.rss_peak = rss_kb(self.pid)
        self.fds_before = self.fds_peak = fd_count(self.pid)

    def sample(self) -> int:
        """Note the current figures; returns the RSS growth so far in KiB."""
        with contextlib.suppress(OSError):
            self.rss_peak = max(self.rss_peak, rss_kb(self.pid))
            self.fds_peak = max(self.fds_peak, fd_count(self.pid))
        return self.rss_peak - self.rss_before

    def after(self) -> None:
        self.rss_after = rss_kb(self.pid)
        self.fds_after = fd_count(self.pid)

    def __str__(self) -> str:
        mb = 1024
        return (
            f"RSS {self.rss_before // mb} MB -> peak {self.rss_peak // mb} MB -> "
            f"{self.rss_after // mb} MB; fds {self.fds_before} -> peak {self.fds_peak} -> "
            f"{self.fds_after}"
        )


class Sampler:
    """Samples Figures from a thread while an attack runs."""

    def __init__(self, figures: Figures, every: float = 0.05) -> None:
        self.figures = figures
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.figures.sample()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.figures.sample()


@dataclass
class Canary:
    """Ordinary chat requests, one every ``every`` seconds on a keep-alive client, in a thread
    (``fresh``: a new connection for each, as a client without a pool would make)."""

    url: str
    every: float = 0.2
    fresh: bool = False
    results: list[tuple[int, float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, client: httpx2.Client) -> None:
        started = time.monotonic()
        try:
            r = client.post(self.url + "/v1/chat/completions", json=CHAT)
            self.results.append((r.status_code, time.monotonic() - started, r.text[:200]))
        except httpx2.HTTPError as exc:
            self.results.append((0, time.monotonic() - started, repr(exc)))

    def _run(self) -> None:
        with httpx2.Client(timeout=10) as shared:
            while not self._stop.is_set():
                if self.fresh:
                    with httpx2.Client(timeout=10) as client:
                        self._one(client)
                else:
                    self._one(shared)
                self._stop.wait(self.every)

    def __enter__(self) -> Canary:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    @property
    def failures(self) -> list[tuple[int, float, str]]:
        return [r for r in self.results if r[0] != 200]

    @property
    def slowest(self) -> float:
        return max((r[1] for r in self.results), default=0.0)

    def __str__(self) -> str:
        return (
            f"{len(self.results) - len(self.failures)}/{len(self.results)} ordinary requests "
            f"succeeded, slowest {self.slowest:.2f} s"
        )


@dataclass
class PipelineResult:
    connections: int = 0  # connections opened (a new one each time the proxy closed one)
    sent: int = 0  # bytes written
    received: int = 0  # bytes of answers read
    aborted: bool = False  # stopped early: the proxy's memory passed the bound


def _pipeline_once(
    port: int, block: bytes, deadline: float, abort: Callable[[], bool], result: PipelineResult
) -> bool:
    """One connection of the flood; False when the flood should stop."""
    stop = threading.Event()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    result.connections += 1

    def write() -> None:
        view = memoryview(block)
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                sent = sock.send(view)
            except TimeoutError:
                continue
            except OSError:
                return
            result.sent += sent
            view = view[sent:] if sent < len(view) else memoryview(block)

    writer = threading.Thread(target=write, daemon=True)
    try:
        sock.settimeout(0.1)
        writer.start()
        while time.monotonic() < deadline:
            if abort():
                result.aborted = True
                return False
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return True
            if not data:
                return True
            result.received += len(data)
        return False
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        writer.join(10)
        sock.close()


def pipeline_flood(
    port: int, request: bytes, seconds: float, abort: Callable[[], bool]
) -> PipelineResult:
    """Connections writing ``request`` pipelined as fast as the proxy takes it, while reading
    (and discarding) the answers, one at a time (a new one whenever the proxy closes one), for
    ``seconds`` or until ``abort()`` says so."""
    result = PipelineResult()
    block = request * max(1, 65536 // len(request))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _pipeline_once(port, block, deadline, abort, result):
        pass
    return result


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to the proxy on loopback, opened within 20 s and closed (waiting at most
    2 s for the close) however the attack on it ends."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 20)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 2)


def concurrently(attacks: Iterable[Coroutine[object, object, None]]) -> None:
    """Run the attacks (one per connection) together until every one has ended."""

    async def main() -> None:
        await asyncio.gather(*attacks)

    asyncio.run(main())


@dataclass
class TrickleResult:
    opened: int = 0  # connections that got their first answer (a 200 or the cap's 503)
    refused: int = 0  # connections answered 503 at once (the connection cap)
    failed: int = 0  # connections that could not be opened or answered
    closed_at: list[float] = field(default_factory=list)  # seconds from the first CRLF to close
    open_at_end: int = 0  # still open when the trickle stopped


async def _trickle_one(
    port: int, every: float, seconds: float, result: TrickleResult, start: asyncio.Event
) -> None:
    try:
        async with connection(port) as (reader, writer):
            writer.write(request("GET /healthz HTTP/1.1"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            if b" 503 " in head.split(b"\r\n", 1)[0]:
                result.refused += 1
                return
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await asyncio.wait_for(reader.readexactly(length), 20)
            result.opened += 1
            await start.wait()
            began = time.monotonic()
            while time.monotonic() - began < seconds:
                try:
                    writer.write(b"\r\n")
                    await writer.drain()
                    data = await asyncio.wait_for(reader.read(4096), every)
                except TimeoutError:
                    continue
                except OSError:
                    data = b""
                if not data or reader.at_eof():
                    result.closed_at.append(time.monotonic() - began)
                    return
            result.open_at_end += 1
    except (OSError, TimeoutError, asyncio.IncompleteReadError, IndexError, ValueError):
        result.failed += 1


def crlf_trickle(
    port: int, connections: int, every: float, seconds: float, on_ready: Callable[[], None]
) -> TrickleResult:
    """``connections`` connections that each make one request, then send ``\\r\\n`` every
    ``every`` seconds for at most ``seconds``. ``on_ready`` runs once all are open."""
    result = TrickleResult()

    async def main() -> None:
        start = asyncio.Event()
        tasks = [
            asyncio.create_task(_trickle_one(port, every, seconds, result, start))
            for _ in range(connections)
        ]
        # Opened, refused or failed: every connection has had its first answer.
        deadline = time.monotonic() + 60
        while result.opened + result.refused + result.failed < connections:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        on_ready()
        start.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return result


@dataclass
class SlowBodyResult:
    answered: dict[int, int] = field(default_factory=dict)  # status -> connections
    answered_at: list[float] = field(default_factory=list)  # seconds from the head
    failed: int = 0  # could not connect, or reset without an answer
    open_at_end: int = 0  # no answer when the trickle stopped


async def _slow_body_one(
    port: int, head: bytes, every: float, seconds: float, result: SlowBodyResult
) -> None:
    try:
        async with connection(port) as (reader, writer):
            writer.write(head)
            began = time.monotonic()
            answer = b""
            while time.monotonic() - began < seconds:
                try:
                    writer.write(b"x")
                    await writer.drain()
                    data = await asyncio.wait_for(reader.read(65536), every)
                except TimeoutError:
                    continue
                answer += data
                if not data or b"\r\n\r\n" in answer:
                    break
            if not answer:
                if time.monotonic() - began >= seconds:
                    result.open_at_end += 1
                else:
                    result.failed += 1
                return
            status = int(answer.split(b" ", 2)[1])
            result.answered[status] = result.answered.get(status, 0) + 1
            result.answered_at.append(time.monotonic() - began)
    except (OSError, TimeoutError, IndexError, ValueError):
        result.failed += 1


def slow_bodies(
    port: int, connections: int, length: int, every: float, seconds: float
) -> SlowBodyResult:
    """``connections`` requests with a valid head announcing ``length`` body bytes, each then
    sending one byte every ``every`` seconds, for at most ``seconds``."""
    head = json_head(CHAT_PATH, length)
    result = SlowBodyResult()
    concurrently(_slow_body_one(port, head, every, seconds, result) for _ in range(connections))
    return result
