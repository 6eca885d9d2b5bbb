"""Limits that keep one caller from starving the others: the request-head deadline
(slowloris, G64), the head size limit (A9), the concurrency limit in front of the upstream pool
(F60), and CL+TE framing (A1)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from tests.e2e.stack import Stack
from tests.support.chat import CHAT, CHAT_PATH
from tests.support.rawsock import request

pytestmark = pytest.mark.e2e


def _connect(s: Stack) -> socket.socket:
    assert s.proxy is not None
    sock = socket.create_connection(("127.0.0.1", s.proxy.port), timeout=10)
    return sock


def _read_all(sock: socket.socket, limit: float = 10) -> bytes:
    sock.settimeout(limit)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def test_g64_slowloris_is_cut_off_and_real_traffic_goes_on(fresh_stack: Stack) -> None:
    s = fresh_stack
    s.env["FOUNDRY_PROXY_HEAD_TIMEOUT"] = "2"
    s.start_proxy()
    silent = [_connect(s) for _ in range(20)]
    dripping = [_connect(s) for _ in range(100)]
    for sock in dripping:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.3):
            for sock in dripping:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Drip: 1\r\n")

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    started = time.monotonic()
    ok = failed = 0
    with httpx2.Client(timeout=10) as client:
        while time.monotonic() - started < 4:
            r = client.post(s.url + "/v1/chat/completions", json=CHAT)
            ok, failed = (ok + 1, failed) if r.status_code == 200 else (ok, failed + 1)
    stop.set()
    dripper.join(5)
    assert failed == 0
    assert ok > 20
    # Every slow connection was answered 408 and closed, about head_timeout after it opened.
    for sock in silent + dripping:
        answer = _read_all(sock, limit=5)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert time.monotonic() - started < 10
    assert s.foundry.journal
    assert all(e.raw_path == "/openai/v1/chat/completions" for e in s.foundry.journal)


def test_a9_an_oversized_request_head_gets_431(stack: Stack) -> None:
    sock = _connect(stack)
    filler = (f"X-Fill-{i}: {'a' * 1000}" for i in range(100))
    with contextlib.suppress(OSError):  # the proxy may close before reading it all
        sock.sendall(request("GET /v1/models HTTP/1.1", *filler))
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    # Normal heads are fine, and the process is alive.
    assert httpx2.get(stack.url + "/v1/models", headers={"X-Big": "b" * 8000}).status_code == 200


def test_a1_content_length_with_transfer_encoding_is_refused_and_closed(stack: Stack) -> None:
    before = len(stack.foundry.journal)
    smuggled = request(
        f"POST {CHAT_PATH} HTTP/1.1",
        "Content-Length: 6",
        "Transfer-Encoding: chunked",
        body=b"0\r\n\r\n" + request("GET /v1/files HTTP/1.1"),
    )
    sock = _connect(stack)
    sock.sendall(smuggled)
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
    assert answer.count(b"HTTP/1.1 ") == 1, "the smuggled request was answered too"
    assert len(stack.foundry.journal) == before


def test_f60_concurrency_limit_answers_503_instead_of_hanging(fresh_stack: Stack) -> None:
    s = fresh_stack
    s.env |= {
        "FOUNDRY_PROXY_POOL_SIZE": "4",
        "FOUNDRY_PROXY_MAX_CONCURRENCY": "4",
        "FOUNDRY_PROXY_QUEUE_TIMEOUT": "0.5",
    }
    s.start_proxy()
    slow = {"x-fake-first-delay": "3"}

    def slow_request() -> int:
        return httpx2.post(
            s.url + "/openai/v1/slow", json=CHAT, headers=slow, timeout=20
        ).status_code

    with ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(slow_request) for _ in range(4)]
        time.sleep(0.5)  # all four are in flight, waiting for the upstream
        started = time.monotonic()
        refused = httpx2.post(s.url + "/v1/chat/completions", json=CHAT, timeout=20)
        waited = time.monotonic() - started
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "upstream_pool_exhausted"
        assert refused.headers["retry-after"] == "1"
        assert 0.4 < waited < 2.5
        assert all(f.result(timeout=20) < 500 for f in busy)
    assert httpx2.post(s.url + "/v1/chat/completions", json=CHAT).status_code == 200
