"""The process-wide budget for buffered request-body bytes (FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES),
attacked over real sockets: many connections each sending a large part of a body, then nothing.

A body up to the replay limit is read before a concurrency slot is taken (forwarding.py), so
the slots do not bound those bytes; before the budget, 500 such connections held ~215 KiB each
until their body deadline. Figures are printed (``pytest -s``) for docs/security.md's
resource-bounds table.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx2
import pytest

from tests.e2e.stack import Stack, serving
from tests.fakes.evil import EvilListeners
from tests.load._support import raise_nofile, settle_fds
from tests.security.floods import Canary, Figures, Sampler, concurrently, connection, eventually
from tests.security.support import assert_healthy
from tests.support.chat import CHAT, CHAT_PATH
from tests.support.rawsock import exchange, json_head, json_post

pytestmark = pytest.mark.e2e

KIB = 1024
MIB = 1024  # KiB, as Figures counts
SETTING = "FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES"


def _metric(url: str, name: str) -> float:
    text = httpx2.get(url + "/metrics", timeout=10).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


@dataclass
class PartialResult:
    answered: dict[int, int] = field(default_factory=dict)  # status -> connections
    retry_after: set[str] = field(default_factory=set)  # Retry-After values of the 503s
    codes: set[str] = field(default_factory=set)  # the error codes answered
    failed: int = 0  # could not connect, or closed without an answer
    open_at_end: int = 0  # no answer within the hold


async def _partial_one(
    port: int, head: bytes, part: bytes, hold: float, result: PartialResult
) -> None:
    try:
        async with connection(port) as (reader, writer):
            writer.write(head + part)
            answer = await _answer_head(reader, hold)
        # Judged once the connection is closed: nothing below waits on the proxy.
        if answer is None:
            result.open_at_end += 1
            return
        if b"\r\n\r\n" not in answer:
            result.failed += 1
            return
        head_text = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        status = int(head_text.split(" ", 2)[1])
        result.answered[status] = result.answered.get(status, 0) + 1
        for line in head_text.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name == "retry-after" and status == 503:
                result.retry_after.add(value.strip())
        # The proxy's code is in its error body (the head carries no copy of it).
        code = re.search(rb'"code": ?"([a-z_]+)"', answer.partition(b"\r\n\r\n")[2])
        if code is not None:
            result.codes.add(code.group(1).decode())
    except (OSError, TimeoutError, IndexError, ValueError):
        result.failed += 1


async def _answer_head(reader: asyncio.StreamReader, hold: float) -> bytes | None:
    """What arrived up to the end of an answer's head (less when the proxy closed first), or
    None when no head came within ``hold`` seconds."""
    began = time.monotonic()
    answer = b""
    while b"\r\n\r\n" not in answer:
        left = hold - (time.monotonic() - began)
        if left <= 0:
            return None
        try:
            data = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            continue
        if not data:
            break
        answer += data
    return answer


def partial_bodies(
    port: int, connections: int, length: int, sent: int, hold: float
) -> PartialResult:
    """``connections`` requests announcing ``length`` body bytes, each sending ``sent`` of them
    at once and then nothing, each waiting up to ``hold`` seconds for an answer."""
    head = json_head(CHAT_PATH, length)
    part = b"x" * sent
    result = PartialResult()
    concurrently(_partial_one(port, head, part, hold, result) for _ in range(connections))
    return result


# -- the flood ------------------------------------------------------------------------------------


@pytest.fixture
def small_budget() -> Iterator[Stack]:
    yield from serving(
        Stack(
            FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES=str(16 * 2**20),
            # The admitted attackers end at their body deadline (two windows: the first brings
            # their 200 KiB, the second nothing), within the hold below.
            FOUNDRY_PROXY_BODY_TIMEOUT="4",
            FOUNDRY_PROXY_LOG_LEVEL="info",
            FOUNDRY_PROXY_ACCESS_LOG="off",
        )
    )


def test_partial_bodies_stay_within_the_budget(small_budget: Stack, evil: EvilListeners) -> None:
    """600 connections each send 200 KiB of a 300 KiB body, then nothing. The proxy holds at
    most the budget (plus each request's first 16 KiB): those past it are answered 503 with
    Retry-After at once; those admitted get 408 at their body deadline; an ordinary request
    keeps succeeding; every byte is given back to the budget."""
    assert small_budget.proxy is not None
    connections, sent = 600, 200 * KIB
    raise_nofile(2 * connections + 512)
    pid = small_budget.proxy.proc.pid
    for _ in range(20):  # warm up allocator and caches before the baseline
        httpx2.post(small_budget.url + "/v1/chat/completions", json=CHAT, timeout=10)
    figures = Figures(pid)
    figures.before()
    with Sampler(figures), Canary(small_budget.url, every=0.25, fresh=True) as canary:
        result = partial_bodies(small_budget.proxy.port, connections, 300 * KIB, sent, hold=20)
    fds = settle_fds(pid, figures.fds_before + 10, 15)
    figures.after()
    print(
        f"\n{connections} x {sent // KIB} KiB partial bodies, budget 16 MiB: {figures}; "
        f"{canary}; answers {result.answered}, {result.failed} failed, "
        f"{result.open_at_end} unanswered"
    )
    # Without the budget every connection held its 200 KiB: ~120 MB for 600.
    bound = 16 * MIB + connections * 16 + 24 * MIB
    assert figures.rss_peak - figures.rss_before < bound, str(figures)
    assert result.answered.get(503, 0) > connections // 2, result
    assert set(result.answered) <= {408, 503}, result
    assert sum(result.answered.values()) == connections, result
    assert result.retry_after == {"1"}, result
    assert "body_buffers_full" in result.codes, result
    assert canary.results
    assert not canary.failures, canary.failures[:3]
    assert fds <= figures.fds_before + 10, str(figures)
    # Nothing leaked: every byte taken from the budget was given back.
    assert eventually(
        lambda: _metric(small_budget.url, "foundry_proxy_request_body_buffered_bytes") == 0, 10
    )
    refused = _metric(small_budget.url, "foundry_proxy_request_body_budget_refusals_total")
    assert refused == result.answered[503]
    log = small_budget.proxy.log
    assert eventually(lambda: SETTING in small_budget.proxy.log, 5), log[-2000:]
    # Rate-limited: one line for hundreds of refusals, not one each.
    assert small_budget.proxy.log.count(SETTING) < 10
    assert_healthy(small_budget, evil)


# -- the budget is given back, whatever ends the request ------------------------------------------


@pytest.fixture
def tight_budget() -> Iterator[Stack]:
    # Room for one 256 KiB body beyond the free 16 KiB, not two.
    yield from serving(
        Stack(
            FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES=str(300 * KIB),
            FOUNDRY_PROXY_BODY_TIMEOUT="2",
        )
    )


def _post_big_chat(url: str) -> httpx2.Response:
    """A chat request whose body (200 KiB) needs most of a tight budget."""
    return httpx2.post(
        url + CHAT_PATH,
        content=json.dumps(CHAT | {"pad": "x" * (200 * KIB)}).encode(),
        headers={"content-type": "application/json"},
        timeout=10,
    )


def test_budget_comes_back_after_every_ending(tight_budget: Stack, evil: EvilListeners) -> None:
    """Bytes return to the budget when a request ends however it ends: answered, client gone
    mid-body, body deadline, client gone during the answer, refused. With a budget of 300 KiB
    a 200 KiB request succeeds after each, so nothing leaked."""
    assert tight_budget.proxy is not None
    url, port = tight_budget.url, tight_budget.proxy.port
    gauge = "foundry_proxy_request_body_buffered_bytes"

    def big_request_succeeds() -> None:
        r = _post_big_chat(url)
        assert r.status_code == 200, r.text[:300]
        assert eventually(lambda: _metric(url, gauge) == 0, 5)

    big_request_succeeds()  # answered

    # Client gone mid-body, with 200 KiB held.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(json_head(CHAT_PATH, 300 * KIB) + b"x" * (200 * KIB))
        assert eventually(lambda: _metric(url, gauge) > 0, 5)
    big_request_succeeds()

    # Body deadline: 200 KiB, then nothing; 408 within two windows.
    ex = exchange(port, [json_head(CHAT_PATH, 300 * KIB) + b"x" * (200 * KIB)], timeout=15)
    assert ex.statuses == [408], ex.text[:300]
    big_request_succeeds()

    # While one request holds 200 KiB, a second one with 200 KiB is refused: 503, Retry-After.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as holder:
        holder.sendall(json_head(CHAT_PATH, 300 * KIB) + b"x" * (200 * KIB))
        assert eventually(lambda: _metric(url, gauge) > 0, 5)
        r = _post_big_chat(url)
        assert r.status_code == 503, r.text[:300]
        assert r.headers["retry-after"] == "1"
        error = r.json()["error"]
        assert error["code"] == "body_buffers_full"
        assert SETTING in error["message"]
        # An ordinary request meanwhile: its body is within the free part.
        small = httpx2.post(url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert small.status_code == 200, small.text[:300]
    big_request_succeeds()

    # Client gone while its answer streams: the body was kept (for replay) until then.
    body = json.dumps(CHAT | {"stream": True, "pad": "x" * (100 * KIB)}).encode()
    stream = json_post(CHAT_PATH, body, {"x-fake-chunks": "100000", "x-fake-delay": "0.01"})
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(stream)
        assert sock.recv(256).startswith(b"HTTP/1.1 200")
        assert _metric(url, gauge) > 0
    big_request_succeeds()

    # A request the app answers without reading its body, on a connection kept open.
    with httpx2.Client(timeout=10) as client:
        r = client.post(url + "/healthz", content=b"x" * (200 * KIB))
        assert r.status_code in (404, 405), r.text[:300]
        assert eventually(lambda: _metric(url, gauge) == 0, 5)
        assert client.get(url + "/healthz").status_code == 200
    big_request_succeeds()

    # A body larger than the replay limit streams: it holds only its start, then gives it back.
    upload = b"x" * (3 * 2**20)
    before = len(tight_budget.foundry.journal)
    r = httpx2.post(
        url + "/v1/chat/completions",
        content=upload,
        headers={"content-type": "application/octet-stream"},
        timeout=20,
    )
    assert r.status_code == 200, r.text[:300]
    (entry,) = tight_budget.foundry.journal[before:]
    assert entry.body_len == len(upload)
    big_request_succeeds()
    assert_healthy(tight_budget, evil)


def test_budget_comes_back_when_a_pipelined_client_leaves(
    tight_budget: Stack, evil: EvilListeners
) -> None:
    """A pipelined request whose body was read but whose turn had not come when the client
    left never reaches the forwarder: the listener gives its bytes back on the disconnect."""
    assert tight_budget.proxy is not None
    url, port = tight_budget.url, tight_budget.proxy.port
    gauge = "foundry_proxy_request_body_buffered_bytes"
    slow = json.dumps(CHAT | {"stream": True, "pad": "x" * (100 * KIB)}).encode()
    first = json_post(CHAT_PATH, slow, {"x-fake-chunks": "1000", "x-fake-delay": "0.05"})
    second = json_post(CHAT_PATH, slow)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(first + second)
        assert sock.recv(256).startswith(b"HTTP/1.1 200")
        # Both bodies held: 2 x (100 KiB - 16 KiB free).
        assert eventually(lambda: _metric(url, gauge) > 150 * KIB, 5)
    assert eventually(lambda: _metric(url, gauge) == 0, 5)
    r = _post_big_chat(url)
    assert r.status_code == 200, r.text[:300]
    # The running request is marked disconnected too (not only the newest pipelined one), so
    # it stops writing instead of raising on a closed transport.
    assert_healthy(tight_budget, evil)
