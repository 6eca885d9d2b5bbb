"""G61-G63: clients that leave at random points, mid-upload or mid-token-wait, and that read slowly.

What each case proves is read off the fake upstream's journal (``disconnected_at``, ``completed``,
``written``) and the proxy process's /proc entries (fds, RSS); figures are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from dataclasses import dataclass

import httpx2
import pytest

from tests.e2e.stack import Stack
from tests.load._support import (
    EXTRA_EVENTS,
    Exchange,
    close_writer,
    ms,
    pct,
    read_events,
    read_head,
    set_rst_on_close,
    stream_once,
)
from tests.support.chat import CHAT_PATH, chat_body
from tests.support.procfs import fd_count, rss_kb, settle_fds
from tests.support.rawsock import json_post, request
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e


def _in_flight_upstream(s: Stack) -> int:
    """Requests the fake upstream is still working on (uvicorn's request-cycle tasks)."""
    return len(s.foundry_server.server.server_state.tasks)


def _normal_requests_work(s: Stack) -> None:
    r = httpx2.post(
        s.url + CHAT_PATH,
        content=chat_body(stream=False),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert s.proxy is not None
    ex = asyncio.run(
        stream_once(s.proxy.port, CHAT_PATH, {"x-fake-chunks": "5", "x-fake-delay": "0"})
    )
    assert ex.status == 200, ex.error
    assert ex.finished, ex
    assert ex.events == 5 + EXTRA_EVENTS, ex


# -- G61 -------------------------------------------------------------------------------------

ABORTS = 1000
BATCH = 100  # clients in flight at once
MID_STREAM_EVENTS = 200


@dataclass
class Abort:
    tag: str
    kind: str
    rst: bool
    aborted_at: float = 0.0
    error: str = ""


async def _abort_one(port: int, plan: Abort, rng: random.Random) -> None:
    """Open a streaming request and leave at the planned point, with a FIN or a RST."""
    headers = {"x-test-id": plan.tag}
    if plan.kind == "before-head":
        # The upstream holds the head back; the client leaves while waiting for it.
        headers |= {"x-fake-first-delay": "3"}
    elif plan.kind == "after-head":
        headers |= {"x-fake-chunks": "50", "x-fake-delay": "0.2"}
    else:
        headers |= {"x-fake-chunks": str(MID_STREAM_EVENTS), "x-fake-delay": "0.02"}
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(15):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(json_post(CHAT_PATH, chat_body(stream=True), headers))
            await writer.drain()
            if plan.kind == "before-head":
                await asyncio.sleep(rng.uniform(0.0, 0.6))
            elif plan.kind == "after-head":
                chunked = await read_head(reader, Exchange())
                assert chunked
                await asyncio.sleep(rng.uniform(0.0, 0.15))
            else:
                ex = Exchange()
                assert await read_head(reader, ex)
                await read_events(reader, ex, stop_after=rng.randint(1, 60))
            if plan.rst:
                set_rst_on_close(writer)
            plan.aborted_at = time.monotonic()
    except (OSError, asyncio.IncompleteReadError, TimeoutError, AssertionError) as exc:
        plan.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            await close_writer(writer)


async def _abort_all(port: int, plans: list[Abort], seed: int) -> None:
    gate = asyncio.Semaphore(BATCH)
    rng = random.Random(seed)

    async def one(plan: Abort) -> None:
        async with gate:
            await _abort_one(port, plan, rng)

    await asyncio.gather(*(one(p) for p in plans))


def test_thousand_random_client_aborts_close_the_upstream(fresh_stack: Stack) -> None:
    """G61: every aborted stream that reached the upstream is closed there, promptly; no fd
    or upstream request is left behind; the proxy keeps serving."""
    s = fresh_stack
    proxy = s.start_proxy()
    pid = proxy.proc.pid
    _normal_requests_work(s)  # warm: token cached, one pooled upstream connection
    fds_before = fd_count(pid)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    kinds = ("before-head", "after-head", "mid-stream")
    plans = [Abort(f"g61-{i}", kinds[i % 3], rst=rng.random() < 0.3) for i in range(ABORTS)]
    started = time.monotonic()
    asyncio.run(_abort_all(proxy.port, plans, seed))
    driven = time.monotonic() - started
    client_errors = [p for p in plans if p.error]
    assert not client_errors, f"seed {seed}: {client_errors[:5]}"

    by_tag = {p.tag: p for p in plans}

    def ours() -> list:
        return [e for e in s.foundry.entries("/chat/completions") if e.header("x-test-id")]

    def quiet() -> bool:
        return all(e.ended is not None for e in ours()) and _in_flight_upstream(s) == 0

    assert wait_until(quiet, 10), (
        f"seed {seed}: upstream requests still open 10 s after the last abort: "
        f"{[e.header('x-test-id') for e in ours() if e.ended is None][:10]}"
    )
    entries = ours()
    completed = [e.header("x-test-id")[0] for e in entries if e.completed]
    assert completed == [], f"seed {seed}: streams played to the end for nobody: {completed[:10]}"
    not_closed = [e.header("x-test-id")[0] for e in entries if e.disconnected_at is None]
    assert not_closed == [], f"seed {seed}: upstream never saw the close: {not_closed[:10]}"
    seen = {e.header("x-test-id")[0] for e in entries}
    must_reach = {p.tag for p in plans if p.kind != "before-head"}
    assert must_reach <= seen, "a stream the client read from is missing from the journal"
    delays = [
        e.disconnected_at - by_tag[e.header("x-test-id")[0]].aborted_at
        for e in entries
        if e.disconnected_at is not None
    ]
    fds_after = settle_fds(pid, fds_before + 5, 10)
    upstream_conns = len(s.foundry_server.server.server_state.connections)
    print(
        f"\n[G61] {ABORTS} aborts ({BATCH} at a time, seed {seed}) driven in {driven:.1f} s; "
        f"{len(entries)} reached the upstream, {ABORTS - len(entries)} left before that; "
        f"upstream close after client abort: p50 {ms(pct(delays, 50))}, "
        f"p99 {ms(pct(delays, 99))}, max {ms(max(delays))}; "
        f"proxy fds before {fds_before}, after {fds_after}; "
        f"upstream connections open at quiescence {upstream_conns}, in flight "
        f"{_in_flight_upstream(s)}"
    )
    assert pct(delays, 99) < 2.0
    assert fds_after <= fds_before + 5, f"fds {fds_before} -> {fds_after}: leaked"
    _normal_requests_work(s)


# -- G62 -------------------------------------------------------------------------------------

REPLAY_BODY_LIMIT = 256 * 1024  # the proxy's default FOUNDRY_PROXY_REPLAY_BODY_LIMIT


@pytest.mark.parametrize(
    ("size", "cut_at"),
    [
        pytest.param(64 * 1024, 16 * 1024, id="buffered-body"),
        # Larger than REPLAY_BODY_LIMIT: the proxy streams it upstream as it arrives.
        pytest.param(2 * 2**20, 1 * 2**20, id="streamed-body"),
    ],
)
def test_disconnect_during_upload(fresh_stack: Stack, size: int, cut_at: int) -> None:
    """G62: a slow chunked upload cut midway: the upstream request is aborted (the fake
    upstream journals a request only once its body is whole, so: no journal entry, and no
    request left in flight there) and the proxy frees everything."""
    s = fresh_stack
    proxy = s.start_proxy()
    pid = proxy.proc.pid
    _normal_requests_work(s)
    fds_before = fd_count(pid)
    journal_before = len(s.foundry.journal)
    head = request(
        f"POST {CHAT_PATH} HTTP/1.1",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
        "x-test-id: g62-upload",
    )
    piece = b"x" * 16384
    sent = 0
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(head)
        deadline = time.monotonic() + 10
        while sent < cut_at and time.monotonic() < deadline:
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
            time.sleep(0.005 if size > 2**20 else 0.05)
        assert sent >= cut_at
        if size > REPLAY_BODY_LIMIT:
            # The proxy must be streaming this one: the upstream has the head, waits for the rest.
            assert wait_until(lambda: _in_flight_upstream(s) == 1, 5), "not streamed upstream"
        reached = _in_flight_upstream(s)
        cut = time.monotonic()
    assert wait_until(lambda: _in_flight_upstream(s) == 0, 3), "upstream request left open"
    freed = time.monotonic() - cut
    time.sleep(0.3)  # nothing may reach the upstream late either
    late = [e for e in s.foundry.journal[journal_before:] if e.header("x-test-id")]
    assert late == [], "the cut upload reached the upstream as a complete request"
    fds_after = settle_fds(pid, fds_before + 2, 5)
    print(
        f"\n[G62] upload of {size} B cut at {sent} B; upstream requests in flight at the "
        f"cut {reached}, gone after "
        f"{ms(freed)}; proxy fds {fds_before} -> {fds_after}"
    )
    assert fds_after <= fds_before + 2
    _normal_requests_work(s)


def test_disconnect_while_waiting_for_a_token(fresh_stack: Stack) -> None:
    """G62: the client leaves while the proxy waits for its first token: when the token
    arrives, nothing is sent upstream for that request; the next request is served."""
    s = fresh_stack
    s.entra.delay = 3
    proxy = s.start_proxy(ready=False)
    assert len(s.foundry.journal) == 0
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(json_post(CHAT_PATH, chat_body(stream=True), {"x-test-id": "g62-token-wait"}))
        time.sleep(0.5)
        assert s.entra.calls, "the proxy is not fetching a token"
        assert s.foundry.journal == []
    left = time.monotonic()
    proxy.wait_ready(timeout=10)
    ready = time.monotonic() - left
    time.sleep(0.5)
    sent = [e for e in s.foundry.journal if e.header("x-test-id")]
    print(f"\n[G62] token arrived {ready:.1f} s after the client left; upstream requests: {sent}")
    assert sent == [], "a request whose client had left was sent upstream"
    _normal_requests_work(s)


# -- G63 -------------------------------------------------------------------------------------

# ~220 B each: ~40 MB of SSE, written by the upstream as fast as it can. Loopback sockets grow
# their buffers on their own (tcp_rmem allows 32 MB here): on a busy machine the upstream got
# 15 MB out before it stalled, 75 % of a 20 MB stream, so the stream is twice that.
SLOW_EVENTS = 180_000
READ_RATE = 64 * 1024  # bytes per second
READ_FOR = 5.0  # seconds


def test_slow_reader_backpressure(fresh_stack: Stack) -> None:
    """G63: a client reading a ~40 MB SSE stream at ~64 KB/s: the proxy buffers little (RSS),
    and the upstream's writes stall (it neither finishes nor keeps writing ahead)."""
    s = fresh_stack
    proxy = s.start_proxy()
    pid = proxy.proc.pid
    _normal_requests_work(s)
    baseline = rss_kb(pid)
    peak = baseline
    headers = {"x-fake-chunks": str(SLOW_EVENTS), "x-fake-delay": "0", "x-test-id": "g63"}
    samples: list[tuple[float, int, int]] = []  # (t, client bytes, upstream bytes)
    got = 0
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(json_post(CHAT_PATH, chat_body(stream=True), headers))
        start = time.monotonic()
        while time.monotonic() - start < READ_FOR:
            data = sock.recv(16384)
            assert data, "the proxy closed the stream"
            got += len(data)
            # Pace to READ_RATE on average: sleep until the bytes read so far are "due".
            time.sleep(max(0.0, start + got / READ_RATE - time.monotonic()))
            peak = max(peak, rss_kb(pid))
            entries = [e for e in s.foundry.journal if e.header("x-test-id")]
            upstream = sum(map(len, entries[0].written)) if entries else 0
            samples.append((time.monotonic() - start, got, upstream))
        entry = next(e for e in s.foundry.journal if e.header("x-test-id"))
        total_events = SLOW_EVENTS + EXTRA_EVENTS
        written_events = len(entry.written)
        finished_early = entry.completed
    elapsed = samples[-1][0]
    mid = next(x for x in samples if x[0] >= 2.0)
    last = samples[-1]
    upstream_late = last[2] - mid[2]  # what the upstream wrote in the last ~3 s
    client_late = last[1] - mid[1]
    growth_mb = (peak - baseline) / 1024
    print(
        f"\n[G63] slow reader: {got / 1e6:.2f} MB read in {elapsed:.1f} s "
        f"({got / elapsed / 1024:.0f} KiB/s); upstream wrote {last[2] / 1e6:.2f} MB "
        f"({written_events}/{total_events} events), of that {upstream_late / 1e6:.2f} MB in the "
        f"last {last[0] - mid[0]:.1f} s (client read {client_late / 1e6:.2f} MB then); "
        f"proxy RSS {baseline / 1024:.1f} MB, peak +{growth_mb:.1f} MB"
    )
    assert not finished_early, "the upstream finished: nothing held it back"
    assert written_events < total_events * 0.75
    # Once the buffers on the way are full, the upstream writes only as fast as the client
    # reads (1 MiB of slack for socket buffers that grow on their own).
    assert upstream_late <= client_late + 2**20, "the upstream kept writing ahead"
    assert growth_mb < 16, f"proxy RSS grew {growth_mb:.1f} MB for one slow reader"
    assert wait_until(lambda: entry.ended is not None, 5)
    assert entry.disconnected_at is not None
