"""Upstream faults at the TCP level (docs/security.md, F54-F60), through a fault-injecting proxy.

The proxy under test points at a ``FaultProxy`` that relays to the stack's fake Foundry and
breaks the connection on purpose: refused, black-holed, slow, reset, truncated, stalled,
throttled. ``tests/e2e/test_upstream_faults.py`` covers what the fake can do by itself (a port
that refuses, a slow first byte, a short body); these are the faults only a network or a broken
server produces. Every test ends with the proxy process alive, no traceback in its log and no
secret in any answer or log line.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest

from tests.e2e.stack import Stack, openai_client
from tests.fakes.faultproxy import FaultProxy, RawServer
from tests.support.chat import CHAT
from tests.support.procfs import rss_kb
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e

STREAM = {**CHAT, "stream": True}
K = 5  # events the client gets before a fault: prompt filter, role, tok0, tok1, tok2
BROKEN = (httpx2.RemoteProtocolError, httpx2.ReadError)


@pytest.fixture
def faulty() -> Iterator[tuple[Stack, FaultProxy]]:
    """A stack whose proxy (started by the test) reaches the fake Foundry via a FaultProxy."""
    s = Stack()
    fault = FaultProxy(s.foundry_server.port)
    s.env["FOUNDRY_PROXY_UPSTREAM"] = fault.url
    try:
        yield s, fault
    finally:
        alive = s.proxy is None or s.proxy.proc.poll() is None
        fault.stop()
        log = s.close()
        assert alive, "the proxy process died:\n" + log[-4000:]
        assert "Traceback" not in log, log[-4000:]
        assert not s.leaks(log), "a secret or token reached the proxy's log"


def _post(s: Stack, body: Any = CHAT, **kwargs: Any) -> httpx2.Response:
    kwargs.setdefault("timeout", 30)
    r = httpx2.post(s.url + "/v1/chat/completions", json=body, **kwargs)
    _clean(s, r)
    return r


def _clean(s: Stack, r: httpx2.Response) -> None:
    """No canary in what the client sees, and no traceback behind a 500."""
    seen = r.text + "".join(f"{k}: {v}\n" for k, v in r.headers.items())
    assert not s.leaks(seen), "a secret or token reached a response"
    assert "Traceback" not in seen


def _proxy_error(r: httpx2.Response, status: int, code: str) -> None:
    """The proxy's own answer (not the upstream's), in the OpenAI error shape."""
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert "x-foundry-proxy-error" not in r.headers  # the code travels in the body only


def _renew(fault: FaultProxy) -> None:
    """Close the connections the proxy keeps pooled, so its next request sees new knobs."""
    fault.drop()
    assert wait_until(lambda: fault.open_connections == 0, 3)
    time.sleep(0.1)  # the proxy's pool notices the close


def _capture(fault: FaultProxy, request: Callable[[], object]) -> bytes:
    """The exact bytes the upstream sends for ``request``, on a connection of its own."""
    _renew(fault)
    before = fault.connections
    request()
    assert fault.connections == before + 1
    raw = bytes(fault.conns[-1].down)
    _renew(fault)
    return raw


def _after_events(raw: bytes, k: int) -> int:
    """Offset in a chunked SSE response just past the k-th event and its chunk's CRLF."""
    at = 0
    for _ in range(k):
        at = raw.index(b"\n\n\r\n", at) + 4
    return at


def _ended_by(fault: FaultProxy, how: str) -> bool:
    """Whether the last connection through ``fault`` ended by ``how``, waiting for the fault
    proxy to record it: its own thread notes the end after the client already saw the cut,
    and on a busy machine the test's check came first (found empty in a loaded run)."""
    return wait_until(lambda: fault.conns[-1].ended_by == how, 5)


def _stream(s: Stack, steering: dict[str, str]) -> tuple[int, bytes, list[float], Exception | None]:
    """A streamed chat read with httpx2: (status, body bytes, arrival times, transport error)."""
    got, stamps = bytearray(), []
    status, error = 0, None
    try:
        with httpx2.stream(
            "POST", s.url + "/v1/chat/completions", json=STREAM, headers=steering, timeout=30
        ) as r:
            status = r.status_code
            for chunk in r.iter_bytes():
                got += chunk
                stamps.append(time.monotonic())
    except httpx2.TransportError as exc:
        error = exc
    assert not s.leaks(got.decode(errors="replace"))
    return status, bytes(got), stamps, error


def _drain(stream: Any, into: list[Any]) -> None:
    for item in stream:
        into.append(item)


# -- F54: connection failures -----------------------------------------------------------------


def test_f54_refused_blackholed_and_vanished_upstream(faulty: tuple[Stack, FaultProxy]) -> None:
    """F54: accept-and-close -> 502 at once; a black hole -> 504 after the read timeout (it
    accepts, so it is a read stall, not a connect failure); an upstream that goes away -> 502
    upstream_unreachable at once."""
    s, fault = faulty
    s.env["FOUNDRY_PROXY_CONNECT_TIMEOUT"] = "1"
    s.env["FOUNDRY_PROXY_READ_TIMEOUT"] = "1.5"
    s.start_proxy()

    fault.refuse = True
    started = time.monotonic()
    r = _post(s)
    refused = time.monotonic() - started
    # The TCP connect succeeds, so this is not upstream_unreachable: the server hung up.
    _proxy_error(r, 502, "upstream_error")
    assert refused < 1.0
    assert s.foundry.journal == []

    fault.refuse, fault.blackhole = False, True
    started = time.monotonic()
    r = _post(s)
    blackholed = time.monotonic() - started
    _proxy_error(r, 504, "upstream_timeout")
    assert blackholed >= 1.4, blackholed
    assert blackholed < 4.0, blackholed
    # The proxy gives the dead connection up instead of pooling it.
    assert wait_until(lambda: fault.open_connections == 0, 3)
    assert s.foundry.journal == []

    fault.blackhole = False
    assert _post(s).status_code == 200
    fault.stop()  # the upstream goes away: pooled connections close, the port refuses
    time.sleep(0.1)
    started = time.monotonic()
    r = _post(s)
    vanished = time.monotonic() - started
    _proxy_error(r, 502, "upstream_unreachable")
    assert vanished < 1.0
    print(f"refused {refused * 1000:.0f} ms, blackhole {blackholed:.2f} s, gone {vanished:.3f} s")


def test_f54_connect_timeout_with_a_full_accept_queue(faulty: tuple[Stack, FaultProxy]) -> None:
    """F54: SYNs dropped (a listener whose accept queue is full) -> 504 after the connect
    timeout, not after the read timeout."""
    s, _ = faulty
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        probe = socket.socket()
        fillers.append(probe)
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", port))
        except TimeoutError:
            pass
        else:
            pytest.skip("this kernel accepts connections past a full accept queue")
        s.env["FOUNDRY_PROXY_UPSTREAM"] = f"http://127.0.0.1:{port}"
        s.env["FOUNDRY_PROXY_CONNECT_TIMEOUT"] = "1"
        s.env["FOUNDRY_PROXY_READ_TIMEOUT"] = "30"
        s.start_proxy()
        started = time.monotonic()
        r = _post(s)
        elapsed = time.monotonic() - started
    finally:
        for sock in fillers:
            sock.close()
        listener.close()
    _proxy_error(r, 504, "upstream_timeout")
    assert 0.9 <= elapsed < 3.0, elapsed
    print(f"connect timeout 1 s -> 504 in {elapsed:.2f} s")


# -- F55: slow first byte -------------------------------------------------------------------


def test_f55_network_latency_within_and_past_the_read_timeout(
    faulty: tuple[Stack, FaultProxy],
) -> None:
    """F55: 1 s each way (2 s before the first byte) with a 4 s read timeout -> 200; 2.5 s each
    way (5 s) -> the proxy's own 504 after ~4 s, before any upstream header."""
    s, fault = faulty
    s.env["FOUNDRY_PROXY_READ_TIMEOUT"] = "4"
    s.start_proxy()
    fault.latency = 1.0
    started = time.monotonic()
    r = _post(s)
    slow = time.monotonic() - started
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"]
    assert slow >= 1.9  # the latency was really there

    fault.latency = 2.5
    _renew(fault)
    started = time.monotonic()
    r = _post(s)
    late = time.monotonic() - started
    _proxy_error(r, 504, "upstream_timeout")
    assert "apim-request-id" not in r.headers
    assert 3.8 <= late < 7.0, late
    assert wait_until(lambda: fault.open_connections == 0, 5)
    print(f"2 s first byte -> 200 in {slow:.2f} s; 5 s -> 504 in {late:.2f} s")


# -- F56: RST mid-stream --------------------------------------------------------------------


def test_f56_reset_after_k_events(faulty: tuple[Stack, FaultProxy]) -> None:
    """F56: an RST after K SSE events -> the client gets exactly those K events, then a broken
    stream (no final chunk), never a synthetic ``data: [DONE]``; same through the openai SDK."""
    s, fault = faulty
    s.start_proxy()
    steering = {"x-fake-chunks": "30", "x-fake-delay": "0.1"}
    raw = _capture(
        fault, lambda: _post(s, STREAM, headers={"x-fake-chunks": "30", "x-fake-delay": "0"})
    )
    assert raw.count(b"data: ") == 30 + 4
    fault.reset_after = _after_events(raw, K)

    status, got, _, error = _stream(s, steering)
    assert status == 200
    assert isinstance(error, BROKEN), error
    assert _ended_by(fault, "reset")
    entry = s.foundry.entries("/chat/completions")[-1]
    assert got == b"".join(entry.written[:K])
    assert b"[DONE]" not in got
    assert b"event: error" not in got
    assert wait_until(lambda: entry.ended is not None, 3)
    assert not entry.completed

    _renew(fault)
    client = openai_client(s)
    chunks: list[Any] = []
    try:
        stream = client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers=steering,
        )
        with pytest.raises((httpx2.TransportError, openai.APIConnectionError)):
            _drain(stream, chunks)
    finally:
        client.close()
    assert _ended_by(fault, "reset")
    assert len(chunks) == K
    assert all(c.choices == [] or c.choices[0].finish_reason is None for c in chunks)


# -- F57: truncated or stalled body ---------------------------------------------------------


def test_f57_connection_closed_inside_the_body(faulty: tuple[Stack, FaultProxy]) -> None:
    """F57: the upstream closes halfway through a Content-Length body -> the client's read
    fails (httpx2 and the openai SDK), never a clean short 200."""
    s, fault = faulty
    s.start_proxy()
    raw = _capture(fault, lambda: _post(s))
    head = raw.index(b"\r\n\r\n") + 4
    assert b"content-length" in raw[:head].lower()
    fault.close_after = head + (len(raw) - head) // 2

    with pytest.raises(BROKEN):
        httpx2.post(s.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert _ended_by(fault, "close")

    _renew(fault)
    client = openai_client(s)
    try:
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        client.close()
    assert _ended_by(fault, "close")

    fault.close_after = None
    _renew(fault)
    assert _post(s).status_code == 200


def test_f57_stall_past_the_read_timeout(faulty: tuple[Stack, FaultProxy]) -> None:
    """F57: the upstream stops sending mid-stream but keeps the socket open -> after the read
    timeout the client connection is aborted and the proxy closes its upstream connection."""
    s, fault = faulty
    s.env["FOUNDRY_PROXY_READ_TIMEOUT"] = "1.5"
    s.start_proxy()
    raw = _capture(
        fault, lambda: _post(s, STREAM, headers={"x-fake-chunks": "100", "x-fake-delay": "0"})
    )
    fault.stall_after = _after_events(raw, K)

    status, got, stamps, error = _stream(s, {"x-fake-chunks": "100", "x-fake-delay": "0.05"})
    aborted = time.monotonic()
    assert status == 200
    assert isinstance(error, BROKEN), error
    entry = s.foundry.entries("/chat/completions")[-1]
    assert got == b"".join(entry.written[:K])
    assert b"[DONE]" not in got
    silence = aborted - stamps[-1]
    assert silence >= 1.3, silence
    assert silence < 4.5, silence
    # The proxy hung up on the stalled upstream connection; the fake saw its stream cut.
    assert wait_until(lambda: fault.open_connections == 0, 3)
    assert fault.conns[-1].ended_by == "client"
    assert wait_until(lambda: entry.ended is not None, 3)
    assert not entry.completed
    print(f"stall with a 1.5 s read timeout -> client aborted after {silence:.2f} s of silence")


# -- F58: error statuses --------------------------------------------------------------------


def test_f58_error_statuses_pass_through_once(faulty: tuple[Stack, FaultProxy]) -> None:
    """F58: 429/500/503 bodies and Retry-After / x-ratelimit-* headers reach the client byte
    for byte, for replayable and streamed request bodies, and nothing is retried."""
    s, _ = faulty
    s.start_proxy()
    for status in (429, 500, 503):
        expected = json.dumps({"error": {"code": str(status), "message": "as asked"}}).encode()
        bodies: list[Any] = [b"{}", iter([b"x" * 200_000, b"x" * 200_000])]  # 2nd: > replay
        for body in bodies:
            before = len(s.foundry.journal)
            r = httpx2.post(s.url + f"/v1/status/{status}", content=body, timeout=30)
            _clean(s, r)
            assert r.status_code == status
            assert r.content == expected
            assert r.headers["retry-after"] == "3"
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
            assert "x-foundry-proxy-error" not in r.headers
            time.sleep(0.2)  # a retry would have arrived by now
            assert len(s.foundry.journal) == before + 1

    # The emulated 429 on a real route, through the openai SDK (its own retries off).
    s.foundry.faults.rate_limit_every = 1
    client = openai_client(s)
    try:
        for stream in (False, True):
            before = len(s.foundry.journal)
            with pytest.raises(openai.RateLimitError) as info:
                client.chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=stream
                )
            headers = info.value.response.headers
            assert headers["retry-after"] == "2"
            assert headers["retry-after-ms"] == "2000"
            assert headers["x-ratelimit-remaining-requests"] == "0"
            time.sleep(0.2)
            assert len(s.foundry.journal) == before + 1
    finally:
        client.close()


# -- F59: garbage responses -----------------------------------------------------------------

_OK_TAIL = b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
GARBAGE = {
    "bad status line": b"HTTP/1.1 2x0 OK\r\n" + _OK_TAIL,
    "not http": b"SSH-2.0-OpenSSH_9.6p1\r\n\r\n",
    "nul in a header": b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\n" + _OK_TAIL,
    "two content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n" + _OK_TAIL,
    "1 MiB header line": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 2**20 + b"\r\n" + _OK_TAIL,
    "1 MiB of headers": b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-H%05d: %s\r\n" % (i, b"b" * 54) for i in range(2**14))
    + _OK_TAIL,
}


def test_f59_garbage_responses_are_502(faulty: tuple[Stack, FaultProxy]) -> None:
    """F59: bad status line, NUL in a header, two Content-Lengths, 1 MiB of headers -> 502;
    the broken connection leaves the pool, the proxy stays up with bounded memory, and the next
    request through a healthy upstream works."""
    s, fault = faulty
    raw = RawServer()
    healthy, garbage = fault.target, ("127.0.0.1", raw.port)
    s.env["FOUNDRY_PROXY_READ_TIMEOUT"] = "3"  # a reused garbage connection would hang to 504
    try:
        s.start_proxy()
        assert s.proxy is not None
        assert _post(s).status_code == 200
        baseline = rss_kb(s.proxy.proc.pid) * 1024
        for _ in range(3):
            for name, reply in GARBAGE.items():
                raw.response = reply
                fault.target = garbage
                _renew(fault)
                r = _post(s)
                _proxy_error(r, 502, "upstream_error")
                # The raw server holds its side open: only the proxy can have closed it.
                assert wait_until(lambda: fault.open_connections == 0, 3), name
                fault.target = healthy
                r = _post(s)
                assert r.status_code == 200, (name, r.text)
        grown = rss_kb(s.proxy.proc.pid) * 1024 - baseline
    finally:
        raw.stop()
    assert raw.requests == 3 * len(GARBAGE)
    assert grown < 50 * 2**20, grown
    print(f"F59: {3 * len(GARBAGE)} garbage answers -> 502; RSS grew {grown / 2**20:.1f} MiB")


# -- F60: DNS -------------------------------------------------------------------------------


def test_f60_unresolvable_upstream_is_502_dns_error(faulty: tuple[Stack, FaultProxy]) -> None:
    """F60: a host that never resolves (.invalid, RFC 6761) -> 502 upstream_dns_error."""
    s, _ = faulty
    s.env["FOUNDRY_PROXY_UPSTREAM"] = "https://nonexistent.invalid"
    s.start_proxy()
    for _ in range(2):  # the failure is not cached into something else
        started = time.monotonic()
        r = _post(s)
        elapsed = time.monotonic() - started
        _proxy_error(r, 502, "upstream_dns_error")
        assert "nonexistent.invalid" in r.json()["error"]["message"]
    assert elapsed < 10
    print(f"unresolvable upstream -> 502 in {elapsed * 1000:.0f} ms")


# -- bandwidth ------------------------------------------------------------------------------


def test_throttled_large_response_streams(faulty: tuple[Stack, FaultProxy]) -> None:
    """A ~1 MB answer through a 200 KB/s link reaches the client as it arrives, not buffered
    until the end."""
    s, fault = faulty
    s.start_proxy()
    fault.bandwidth = 200_000
    _renew(fault)
    payload = {"model": "emb", "input": [f"text {i}" for i in range(32)], "dimensions": 3072}
    started = time.monotonic()
    first: float | None = None
    body = bytearray()
    with httpx2.stream("POST", s.url + "/v1/embeddings", json=payload, timeout=60) as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            if first is None:
                first = time.monotonic() - started
            body += chunk
    total = time.monotonic() - started
    assert len(body) > 900_000
    assert len(json.loads(body)["data"]) == 32
    assert not s.leaks(body.decode())
    assert total >= 0.7 * len(body) / 200_000  # the cap was in force
    assert first is not None
    assert first < 0.25 * total, (first, total)
    print(f"{len(body)} bytes at 200 KB/s: first body bytes {first:.2f} s, end {total:.2f} s")
