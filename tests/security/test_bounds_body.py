"""Resource bounds on the way through: a request body that trickles, an answer the client stops
reading, and what aiohttp would add to a request on its own (security issue, item 2).

Attacks are bounded in count and time, on loopback; figures are printed (``pytest -s``) for
docs/security.md's resource-bounds table.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.e2e.stack import Stack, serving
from tests.fakes.evil import EvilListeners
from tests.load._support import raise_nofile, settle_fds
from tests.security.floods import Canary, Figures, Sampler, eventually, slow_bodies
from tests.security.support import assert_healthy
from tests.support.chat import CHAT, CHAT_PATH
from tests.support.rawsock import exchange, json_head, json_post, request

pytestmark = pytest.mark.e2e

MIB = 1024  # KiB


# -- slow request bodies --------------------------------------------------------------------------


@pytest.fixture
def short_body() -> Iterator[Stack]:
    yield from serving(Stack(FOUNDRY_PROXY_BODY_TIMEOUT="2"))


def test_a_trickling_body_gets_408(short_body: Stack, evil: EvilListeners) -> None:
    """A body that brings less than FOUNDRY_PROXY_BODY_MIN_RATE bytes/s over a
    FOUNDRY_PROXY_BODY_TIMEOUT window ends with 408, and nothing reaches the upstream."""
    assert short_body.proxy is not None
    head = json_head(CHAT_PATH, 100)
    before = len(short_body.foundry.journal)
    began = time.monotonic()
    ex = exchange(short_body.proxy.port, [head] + [b"x"] * 30, pause=0.25, timeout=10)
    took = time.monotonic() - began
    assert ex.statuses == [408], ex.text[:500]
    assert json.loads(ex.responses[0].body)["error"]["code"] == "request_timeout"
    assert ex.closed
    assert took < 2 + 3, f"answered after {took:.1f} s"
    assert len(short_body.foundry.journal) == before
    assert eventually(lambda: "FOUNDRY_PROXY_BODY_TIMEOUT" in short_body.proxy.log, 5)
    assert_healthy(short_body, evil)


def test_a_steady_slow_body_is_not_cut(short_body: Stack, evil: EvilListeners) -> None:
    """A body arriving above the minimum rate passes, however long it takes in all."""
    assert short_body.proxy is not None
    body = json.dumps(CHAT | {"pad": "x" * 6000}).encode()
    head = json_head(CHAT_PATH, len(body))
    # 1,200 bytes every 0.6 s: 2,000 bytes/s, for about 3 s (past one 2 s window).
    pieces = [head] + [body[i : i + 1200] for i in range(0, len(body), 1200)]
    ex = exchange(short_body.proxy.port, pieces, pause=0.6, timeout=15)
    assert ex.statuses == [200], ex.text[:500]
    assert_healthy(short_body, evil)


@pytest.fixture
def few_slots() -> Iterator[Stack]:
    yield from serving(
        Stack(
            FOUNDRY_PROXY_MAX_CONCURRENCY="4",
            FOUNDRY_PROXY_QUEUE_TIMEOUT="1",
            FOUNDRY_PROXY_BODY_TIMEOUT="60",
        )
    )


def test_slow_bodies_hold_no_concurrency_slot(few_slots: Stack, evil: EvilListeners) -> None:
    """Twice FOUNDRY_PROXY_MAX_CONCURRENCY requests whose bodies trickle in (within the body
    deadline) must not lock everyone else out: a small body is read before a slot is taken."""
    assert few_slots.proxy is not None
    port = few_slots.proxy.port
    flood = threading.Thread(target=slow_bodies, args=(port, 8, 100, 0.5, 6), daemon=True)
    flood.start()
    try:
        time.sleep(1)
        with Canary(few_slots.url, every=0.3, fresh=True) as canary:
            time.sleep(3)
    finally:
        flood.join(20)
    print(f"\nslow bodies x8 with 4 slots: {canary}")
    assert canary.results
    assert not canary.failures, canary.failures[:3]
    assert_healthy(few_slots, evil)


@pytest.fixture
def flood_stack() -> Iterator[Stack]:
    # A queue timeout shorter than the body deadline: a request that waited for a slot held
    # by an attacker would get 503.
    yield from serving(
        Stack(
            FOUNDRY_PROXY_BODY_TIMEOUT="4",
            FOUNDRY_PROXY_QUEUE_TIMEOUT="1",
            FOUNDRY_PROXY_LOG_LEVEL="info",
            FOUNDRY_PROXY_ACCESS_LOG="off",
        )
    )


def test_slow_body_flood_of_1024_connections(flood_stack: Stack, evil: EvilListeners) -> None:
    """The issue's attack: 1024 connections, each a valid head with Content-Length: 100 then a
    byte every 2 s. Ordinary requests keep succeeding throughout; every attacker gets 408 at
    its body deadline; fds and memory come back."""
    assert flood_stack.proxy is not None
    connections = 1024
    raise_nofile(2 * connections + 512)
    pid = flood_stack.proxy.proc.pid
    figures = Figures(pid)
    figures.before()
    with Sampler(figures, every=0.2), Canary(flood_stack.url, every=0.25, fresh=True) as canary:
        result = slow_bodies(flood_stack.proxy.port, connections, 100, every=2.0, seconds=14)
    fds = settle_fds(pid, figures.fds_before + 10, 15)
    figures.after()
    late = max(result.answered_at, default=0)
    print(
        f"\nslow-body flood of {connections}: {figures}; {canary}; answers {result.answered}, "
        f"last after {late:.1f} s, {result.failed} failed, {result.open_at_end} unanswered"
    )
    assert result.answered == {408: connections}, result
    assert late < 4 + 2 + 4
    assert fds <= figures.fds_before + 10, str(figures)
    assert figures.rss_peak - figures.rss_before < 64 * MIB, str(figures)
    assert canary.results
    assert not canary.failures, canary.failures[:3]
    assert_healthy(flood_stack, evil)


# -- a client that stops reading ------------------------------------------------------------------


@pytest.fixture
def one_slot() -> Iterator[Stack]:
    yield from serving(
        Stack(
            FOUNDRY_PROXY_MAX_CONCURRENCY="1",
            FOUNDRY_PROXY_QUEUE_TIMEOUT="0.5",
            FOUNDRY_PROXY_SEND_TIMEOUT="2",
        )
    )


def test_a_client_that_stops_reading_frees_its_slot(one_slot: Stack, evil: EvilListeners) -> None:
    """A client that reads the head of a long streamed answer and then nothing: after
    FOUNDRY_PROXY_SEND_TIMEOUT without progress its connection is closed, the upstream request
    ends and the slot is free again."""
    assert one_slot.proxy is not None
    body = json.dumps(CHAT | {"stream": True}).encode()
    stream = json_post(CHAT_PATH, body, {"x-fake-chunks": "400000", "x-fake-delay": "0"})
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", one_slot.proxy.port))
        sock.sendall(stream)
        assert sock.recv(256).startswith(b"HTTP/1.1 200")
        began = time.monotonic()
        status = 0
        with httpx2.Client(timeout=10) as client:
            while time.monotonic() - began < 15:
                r = client.post(one_slot.url + "/v1/chat/completions", json=CHAT)
                status = r.status_code
                if status == 200:
                    break
                assert r.json()["error"]["code"] == "upstream_pool_exhausted"
        freed = time.monotonic() - began
    finally:
        sock.close()
    print(f"\nstalled reader: slot free again after {freed:.1f} s")
    assert status == 200, "the stalled client kept its slot"
    assert freed < 2 + 6
    assert eventually(lambda: "FOUNDRY_PROXY_SEND_TIMEOUT" in one_slot.proxy.log, 5)
    (entry,) = [e for e in one_slot.foundry.journal if e.header("x-fake-chunks")]
    assert not entry.completed, "the upstream answer should have been cut, not finished"
    assert_healthy(one_slot, evil)


# -- what aiohttp adds ----------------------------------------------------------------------------


@pytest.fixture
def plain() -> Iterator[Stack]:
    yield from serving(Stack())


def test_no_header_is_invented_upstream(plain: Stack, evil: EvilListeners) -> None:
    """A request without Content-Type, Accept or User-Agent reaches the upstream without them
    (aiohttp would add application/octet-stream, */* and its own User-Agent)."""
    assert plain.proxy is not None
    body = json.dumps(CHAT).encode()
    bare = request(f"POST {CHAT_PATH} HTTP/1.1", f"Content-Length: {len(body)}", body=body)
    before = len(plain.foundry.journal)
    ex = exchange(plain.proxy.port, bare, timeout=10)
    assert ex.statuses == [200], ex.text[:500]
    (entry,) = plain.foundry.journal[before:]
    assert entry.header("content-type") == []
    assert entry.header("accept") == []
    assert entry.header("user-agent") == []
    # What the client did send still goes through unchanged.
    before = len(plain.foundry.journal)
    r = httpx2.post(
        plain.url + "/v1/chat/completions",
        json=CHAT,
        headers={"User-Agent": "app/1.0", "Accept": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200
    (entry,) = plain.foundry.journal[before:]
    assert entry.header("user-agent") == ["app/1.0"]
    assert entry.header("accept") == ["application/json"]
    assert entry.header("content-type") == ["application/json"]
    assert_healthy(plain, evil)
