"""Realtime (WebSocket) sessions attacked over real sockets: the concurrency slot a session
takes, the bytes it may make the proxy hold while a peer stops reading, the upstream handshake's
redirects, and credentials hidden in the handshake's query.

Every attack is bounded in count and time and reaps its sockets whatever happens. Figures are
printed (``pytest -s``) for docs/security.md's resource-bounds table.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.e2e.test_realtime import CLIENT_SECRETS, RealtimeStack, running, start
from tests.fakes.evil import EvilListeners
from tests.security.floods import CHAT, Canary, Figures, Sampler, eventually
from tests.security.support import assert_healthy
from tests.support.procfs import settle_fds, settle_rss

pytestmark = pytest.mark.e2e

TIMEOUT = 5.0
MIB = 1024  # KiB, as Figures counts


def _open(
    rt: RealtimeStack, path: str = "/v1/realtime?model=dep", **kwargs: object
) -> ClientConnection:
    """A raw client through the proxy, past session.created; the caller closes it."""
    ws = connect(
        rt.ws(path),
        open_timeout=TIMEOUT,
        close_timeout=1,
        max_size=None,
        compression=None,
        legacy=True,  # connected here, closed by the caller (not a with block)
        **kwargs,  # type: ignore[arg-type]
    )
    try:
        first = ws.recv(timeout=TIMEOUT)
        assert isinstance(first, str)
        assert json.loads(first)["type"] == "session.created"
    except BaseException:
        ws.close()
        raise
    return ws


def _refusal(rt: RealtimeStack, path: str = "/v1/realtime?model=dep") -> int:
    """The HTTP status the proxy refuses a handshake with (fails if it accepts)."""
    with pytest.raises(InvalidStatus) as caught, connect(rt.ws(path), open_timeout=15):
        pass
    return caught.value.response.status_code


def _cut(ws: ClientConnection) -> None:
    """Close a client socket at once, whatever state its connection is in."""
    with contextlib.suppress(OSError):
        ws.socket.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        ws.close()


# -- the concurrency slot ------------------------------------------------------------------------


@pytest.fixture
def two_slots() -> Iterator[RealtimeStack]:
    with running(
        start(
            FOUNDRY_PROXY_MAX_CONCURRENCY="2",
            FOUNDRY_PROXY_POOL_SIZE="2",
            FOUNDRY_PROXY_QUEUE_TIMEOUT="0.5",
        )
    ) as stack:
        yield stack


def test_a_session_takes_a_concurrency_slot_until_it_ends(two_slots: RealtimeStack) -> None:
    rt = two_slots
    held: list[ClientConnection] = []
    try:
        held = [_open(rt), _open(rt)]
        # Both slots are held by sessions: a third session and a plain request wait for the
        # queue timeout, then are refused.
        assert _refusal(rt) == 503
        reply = httpx2.post(rt.s.url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["code"] == "upstream_pool_exhausted"
        assert rt.fake.count() == 2, "the refused handshake reached the upstream"
        # A session that ends gives its slot back.
        held.pop().close()
        assert eventually(
            lambda: httpx2.post(rt.s.url + "/v1/chat/completions", json=CHAT).status_code == 200
        )
        with contextlib.closing(_open(rt)) as third:
            third.send("still relayed")
            assert third.recv(timeout=TIMEOUT) == "still relayed"
    finally:
        for ws in held:
            _cut(ws)


# -- a flood of large messages to an upstream that stopped reading --------------------------------


@dataclass
class Flooder:
    """One client sending ``count`` binary messages of ``size`` bytes as fast as the proxy
    takes them; what happened to it is recorded, never raised."""

    rt: RealtimeStack
    count: int
    size: int
    status: int = 0  # the handshake's refusal, 0 when accepted
    accepted_at: float | None = None
    sent: int = 0
    close_code: int | None = None
    ended_at: float | None = None
    error: str = ""
    ws: ClientConnection | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.ws = _open(self.rt)
        except InvalidStatus as refused:
            self.status = refused.response.status_code
            return
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            self.error = repr(exc)
            return
        self.accepted_at = time.monotonic()
        payload = os.urandom(self.size)
        try:
            for _ in range(self.count):
                self.ws.send(payload)
                self.sent += 1
            while True:  # until the proxy closes the session
                self.ws.recv(timeout=60)
        except ConnectionClosed:
            pass
        except (OSError, TimeoutError) as exc:
            self.error = repr(exc)
        self.ended_at = time.monotonic()
        # What the proxy's close frame said, if one came (a thread of the client reads it,
        # whatever this one was doing).
        close = self.ws.protocol.close_rcvd
        self.close_code = close.code if close is not None else None


@pytest.fixture
def flood_stack() -> Iterator[RealtimeStack]:
    stack = start(
        FOUNDRY_PROXY_LOG_LEVEL="info",
        FOUNDRY_PROXY_MAX_CONCURRENCY="4",
        FOUNDRY_PROXY_POOL_SIZE="16",
        FOUNDRY_PROXY_QUEUE_TIMEOUT="1",
        FOUNDRY_PROXY_SEND_TIMEOUT="3",
    )
    with running(stack) as rt:
        yield rt


def _access_lines(log: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith('{"time":')]


def upstream_sockets(pid: int, port: int) -> int:
    """The proxy's TCP connections to ``port`` (the fake upstream): one per open session."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[3] == "01" and fields[9] in inodes:  # ESTABLISHED
            count += 1
    return count


@dataclass
class SessionCounter:
    """The most sessions the proxy had open upstream at once, sampled from a thread."""

    pid: int
    port: int
    most: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):
                self.most = max(self.most, upstream_sockets(self.pid, self.port))

    def __enter__(self) -> SessionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Prober:
    """GET /healthz every ``every`` seconds from a thread: is the proxy still answering?"""

    url: str
    every: float = 0.25
    results: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            began = time.monotonic()
            try:
                status = httpx2.get(self.url + "/healthz", timeout=10).status_code
            except httpx2.HTTPError:
                status = 0
            self.results.append((status, time.monotonic() - began))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def __str__(self) -> str:
        ok = sum(1 for status, _ in self.results if status == 200)
        slowest = max((took for _, took in self.results), default=0.0)
        return f"/healthz {ok}/{len(self.results)} answered, slowest {slowest:.2f} s"


def test_large_messages_to_a_stalled_upstream_keep_memory_bounded(
    flood_stack: RealtimeStack, evil: EvilListeners
) -> None:
    """Ten sessions sending 16 MiB messages to an upstream that reads nothing: at most
    MAX_CONCURRENCY of them are accepted, each makes the proxy hold a bounded number of bytes,
    and each is closed (1011) once the upstream has taken nothing for the send deadline, which
    gives its memory, its sockets and its slot back."""
    rt = flood_stack
    assert rt.s.proxy is not None
    pid = rt.s.proxy.proc.pid
    figures = Figures(pid)
    for _ in range(5):  # warm up before the baseline
        assert httpx2.post(rt.s.url + "/v1/chat/completions", json=CHAT).status_code == 200
    figures.before()
    rt.fake.stop_reading = True
    flooders = [Flooder(rt, count=6, size=16 * 1024 * 1024) for _ in range(10)]
    started = time.monotonic()
    try:
        # Less the pooled HTTP connections the warm-up left open.
        pooled = upstream_sockets(pid, rt.server.port)
        counter = SessionCounter(pid, rt.server.port)
        with Sampler(figures), Prober(rt.s.url) as prober, counter:
            for flooder in flooders:
                flooder.thread.start()
            deadline = started + 40
            for flooder in flooders:
                flooder.thread.join(max(0.0, deadline - time.monotonic()))
        alive = [f for f in flooders if f.thread.is_alive()]
    finally:
        rt.fake.stop_reading = False
        for flooder in flooders:
            if flooder.ws is not None:
                _cut(flooder.ws)
        for flooder in flooders:
            flooder.thread.join(10)
    # Once the sessions are gone, ordinary requests are served again.
    with Canary(rt.s.url) as canary:
        time.sleep(1.5)
    settle_fds(pid, figures.fds_before + 2, 10)
    # The canary kept the proxy busy: its idle collection comes after, not at once.
    settle_rss(pid, figures.rss_before + 64 * MIB, 10)
    figures.after()
    accepted = [f for f in flooders if f.accepted_at is not None]
    refused = [f.status for f in flooders if f.status]
    took = [
        round(f.ended_at - f.accepted_at, 1)
        for f in accepted
        if f.ended_at is not None and f.accepted_at is not None
    ]
    print(
        f"\nrealtime flood (10 sessions x 16 MiB messages, upstream not reading, "
        f"MAX_CONCURRENCY=4, SEND_TIMEOUT=3, default buffer budget): {figures}; "
        f"{len(accepted)} accepted over time, at most {counter.most - pooled} at once, refused "
        f"{refused}; messages sent per session {[f.sent for f in accepted]}; close codes "
        f"seen by the clients {[f.close_code for f in accepted]} after {took} s; during: "
        f"{prober}; "
        f"after: {canary}"
    )
    assert not alive, f"{len(alive)} flooding sessions were never closed by the proxy"
    errors = [f.error for f in flooders if f.error]
    assert not errors, errors
    most = counter.most - pooled
    assert most in range(1, 5), "more sessions than MAX_CONCURRENCY were open at once"
    assert set(refused) <= {503}, refused
    # How the proxy ended each session, from its access log (a client blocked sending a large
    # message may never read the close frame): 1011 when the upstream took nothing for the send
    # deadline, 1013 when the message did not fit in the buffer budget.
    sessions = [
        line
        for line in _access_lines(rt.s.proxy.log)
        if line["route"] == "realtime" and line["status"] == 101
    ]
    assert len(sessions) == len(accepted), sessions
    codes = [line["close_code"] for line in sessions]
    assert set(codes) <= {1011, 1013}, codes
    stalled = [line for line in sessions if line["close_code"] == 1011]
    assert stalled, codes
    assert all(line.get("error") == "upstream_stalled" for line in stalled), stalled
    # The buffer budget (64 MiB by default) bounds the bytes all sessions together hold; the
    # allocator may keep as much again in freed blocks (glibc's heap, for blocks this large,
    # until it is trimmed). Unbounded, ten sessions took 60 -> 619 MB and kept it.
    assert figures.rss_peak - figures.rss_before < 3 * 64 * MIB, str(figures)
    assert figures.rss_after - figures.rss_before < 64 * MIB, str(figures)
    assert figures.fds_after <= figures.fds_before + 2, str(figures)
    assert prober.results
    assert all(status == 200 for status, _ in prober.results), prober
    assert canary.results
    assert not canary.failures, canary.failures[:3]
    assert_healthy(rt.s, evil)


def test_a_client_that_stops_reading_is_cut_off_and_its_session_ends(
    flood_stack: RealtimeStack, evil: EvilListeners
) -> None:
    """The upstream sends 1 MiB messages as fast as it can to a client that reads nothing:
    the proxy holds a bounded amount, cuts the client off once it has taken nothing for the
    send deadline, closes the upstream session and gives the slot back."""
    rt = flood_stack
    assert rt.s.proxy is not None
    pid = rt.s.proxy.proc.pid
    figures = Figures(pid)
    figures.before()
    first = rt.fake.count()
    # max_queue=1: the client's reader thread stops reading after one message, so the
    # proxy's writes to it stall.
    ws = _open(rt, max_queue=1)
    try:
        with Sampler(figures):
            ws.send(json.dumps({"type": "test.burst", "count": 200, "size": 1 << 20}))
            session = rt.fake.session(first)
            ended = eventually(lambda: session.ended is not None, 20)
            cut_at = time.monotonic()
    finally:
        _cut(ws)
    settle_fds(pid, figures.fds_before, 10)
    figures.after()
    print(
        f"\nrealtime client not reading (SEND_TIMEOUT=3): {figures}; upstream sent "
        f"{session.sent} messages before the session ended"
    )
    assert ended, "the upstream session outlived a client that read nothing"
    assert session.closed_by == "peer"
    assert session.started + 3 <= cut_at
    assert session.sent < 200, "the proxy took everything the upstream sent"
    assert figures.rss_peak - figures.rss_before < 64 * MIB, str(figures)
    assert figures.fds_after <= figures.fds_before, str(figures)
    assert eventually(
        lambda: "its session was ended (FOUNDRY_PROXY_SEND_TIMEOUT)" in rt.s.proxy.log
    )
    # The slot came back: all four can be taken again.
    held = [_open(rt) for _ in range(4)]
    for other in held:
        other.close()
    assert_healthy(rt.s, evil)


# -- the upstream handshake never follows a redirect ---------------------------------------------


@pytest.fixture(scope="module")
def rt() -> Iterator[RealtimeStack]:
    with running(start()) as stack:
        yield stack


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_an_upstream_redirect_is_a_502_same_origin(rt: RealtimeStack, status: int) -> None:
    first = rt.fake.count()
    rt.fake.redirect = (status, "/openai/v1/realtime?model=elsewhere")
    try:
        assert _refusal(rt) == 502
    finally:
        rt.fake.redirect = None
    # One handshake (the redirected one); the proxy never made a second.
    time.sleep(0.3)
    assert rt.fake.count() == first + 1
    assert rt.fake.sessions[first].status == status


def test_an_upstream_redirect_to_another_host_is_a_502(
    rt: RealtimeStack, evil: EvilListeners
) -> None:
    first = rt.fake.count()
    other = evil.servers[0]
    rt.fake.redirect = (302, f"http://{other.host}:{other.port}/openai/v1/realtime?model=dep")
    try:
        assert _refusal(rt) == 502
    finally:
        rt.fake.redirect = None
    time.sleep(0.3)
    assert rt.fake.count() == first + 1
    assert evil.hits == [], f"the proxy followed the redirect: {evil.hits}"


# -- credentials in the handshake's query --------------------------------------------------------

QUERY_SECRET = CLIENT_SECRETS[1]
# Spellings of api-key that the upstream (which percent-decodes names) reads as api-key, or
# that some servers normalise to it.
SPELLINGS = [
    "api-key",
    "API-KEY",
    "api_key",
    "api%2Dkey",
    "api%2dkey",
    "%61pi-key",
    "api%5Fkey",
    "api-key%20",
    "%20api-key",
    "api-key+",
    "api-key[]",
    "api-key%5B%5D",
    "apikey",
    "subscription-key",
    "Ocp-Apim-Subscription-Key",
    "access_token",
    "api%252Dkey",
]


@pytest.mark.parametrize("name", SPELLINGS)
def test_a_key_in_the_websocket_query_never_reaches_the_upstream(
    rt: RealtimeStack, name: str
) -> None:
    first = rt.fake.count()
    with contextlib.closing(_open(rt, f"/v1/realtime?model=dep&{name}={QUERY_SECRET}&x=1")):
        pass
    session = rt.fake.session(first)
    assert QUERY_SECRET not in session.query, (name, session.query)
    assert session.query == "model=dep&x=1"


@pytest.mark.parametrize("name", SPELLINGS)
def test_a_key_in_an_http_query_never_reaches_the_upstream(rt: RealtimeStack, name: str) -> None:
    before = len(rt.s.foundry.journal)
    url = f"{rt.s.url}/v1/chat/completions?{name}={QUERY_SECRET}&x=1"
    reply = httpx2.post(url, json=CHAT, timeout=10)
    assert reply.status_code == 200, reply.text
    [entry] = rt.s.foundry.journal[before:]
    assert QUERY_SECRET not in entry.query, (name, entry.query)
    assert entry.query == "x=1"


def test_the_websocket_query_is_not_logged(rt: RealtimeStack) -> None:
    """uvicorn writes each WebSocket handshake line at INFO with its query string; the
    secret must not reach the log in any spelling (the module's stack checks its whole log at
    teardown too)."""
    assert rt.s.proxy is not None
    start_line = len(rt.s.proxy.lines)
    for name in ("api%2Dkey", "token", "sig"):
        with contextlib.closing(_open(rt, f"/v1/realtime?model=dep&{name}={QUERY_SECRET}")):
            pass
    assert eventually(lambda: "WebSocket /v1/realtime" in "".join(rt.s.proxy.lines[start_line:]))
    log = "".join(rt.s.proxy.lines[start_line:])
    assert QUERY_SECRET not in log
    assert "model=dep" not in log, "the query string reached the log"
    assert urlsplit(rt.s.url).hostname
