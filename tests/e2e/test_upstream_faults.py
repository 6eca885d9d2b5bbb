"""Client disconnects and upstream failures: what each side sees, and how fast."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.e2e.stack import Stack
from tests.fakes.serve import bind_loopback
from tests.support.chat import CHAT, CHAT_PATH, chat_body
from tests.support.rawsock import json_post
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e

STREAM = CHAT | {"stream": True}


def _open_stream(stack: Stack, steering: dict[str, str]) -> socket.socket:
    """A raw-socket streaming chat request, so the test decides exactly when the client leaves."""
    assert stack.proxy is not None
    sock = socket.create_connection(("127.0.0.1", stack.proxy.port), timeout=5)
    sock.sendall(json_post(CHAT_PATH, chat_body(stream=True), steering))
    return sock


def test_client_disconnect_mid_stream_closes_upstream(stack: Stack) -> None:
    """G61: the upstream sees the close within a second of the client leaving."""
    sock = _open_stream(stack, {"x-fake-chunks": "500", "x-fake-delay": "0.1"})
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(65536)
    entry = stack.foundry.entries("/chat/completions")[-1]
    assert entry.disconnected_at is None
    sock.close()
    closed_at = time.monotonic()
    assert wait_until(lambda: entry.disconnected_at is not None, 3), "upstream never saw the close"
    assert entry.disconnected_at is not None
    assert entry.disconnected_at - closed_at < 1.0
    assert not entry.completed


def test_client_disconnect_while_waiting_for_headers(stack: Stack) -> None:
    """G61: a client that gives up before the first byte also frees the upstream request."""
    sock = _open_stream(stack, {"x-fake-first-delay": "3"})
    assert wait_until(lambda: stack.foundry.entries("/chat/completions")[-1].started > 0, 2)
    entry = stack.foundry.entries("/chat/completions")[-1]
    time.sleep(0.3)
    sock.close()
    # The fake is sleeping before it answers, so it notices only when it writes; what matters
    # is that the stream it then starts is cut, not played to the end for nobody.
    assert wait_until(lambda: entry.ended is not None, 6)
    assert not entry.completed


def test_stream_bytes_are_unchanged(stack: Stack) -> None:
    """The SSE body through the proxy is byte-identical to what the upstream wrote."""
    headers = {"x-fake-chunks": "20", "x-fake-delay": "0"}
    proxied = httpx2.post(stack.url + "/v1/chat/completions", json=STREAM, headers=headers)
    assert proxied.status_code == 200
    assert proxied.headers["content-type"].startswith("text/event-stream")
    entry = stack.foundry.entries("/chat/completions")[-1]
    assert len(entry.written) == 20 + 4
    assert proxied.content == b"".join(entry.written)
    assert proxied.content.endswith(b"data: [DONE]\n\n")


def test_truncated_upstream_body_is_not_a_clean_response(stack: Stack) -> None:
    """F57: Content-Length 1000 but 600 bytes: the client sees a broken response."""
    with pytest.raises(httpx2.RemoteProtocolError):
        httpx2.get(stack.url + "/v1/truncated")
    assert httpx2.get(stack.url + "/healthz").status_code == 200


def test_upstream_refusing_connections_is_502(fresh_stack: Stack) -> None:
    """F54: connection refused -> 502 upstream_unreachable, quickly."""
    s = fresh_stack
    closed = bind_loopback()  # bound, never listening: connections are refused
    s.env["FOUNDRY_PROXY_UPSTREAM"] = f"http://127.0.0.1:{closed.getsockname()[1]}"
    try:
        s.start_proxy()
        started = time.monotonic()
        r = httpx2.post(s.url + "/v1/chat/completions", json={"model": "m"})
        assert time.monotonic() - started < 2
    finally:
        closed.close()
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unreachable"
    assert not s.leaks(r.text)


def test_slow_upstream_past_read_timeout_is_504(fresh_stack: Stack) -> None:
    """F55: no first byte within the read timeout -> 504 upstream_timeout."""
    s = fresh_stack
    s.env["FOUNDRY_PROXY_READ_TIMEOUT"] = "0.5"
    s.start_proxy()
    r = httpx2.post(
        s.url + "/v1/chat/completions", json={"model": "m"}, headers={"x-fake-first-delay": "2"}
    )
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    # A slow first token inside the timeout is fine.
    r = httpx2.post(
        s.url + "/v1/chat/completions", json={"model": "m"}, headers={"x-fake-first-delay": "0.2"}
    )
    assert r.status_code == 200


def test_oversized_bodies_get_413(fresh_stack: Stack) -> None:
    """B10: over the limit by Content-Length (refused before reading) or while streaming."""
    s = fresh_stack
    s.env["FOUNDRY_PROXY_MAX_BODY_BYTES"] = "1000000"
    s.start_proxy()
    r = httpx2.post(s.url + "/v1/files", content=b"x" * 1_000_001)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"y" * 50_000

    r = httpx2.post(s.url + "/v1/files", content=chunks())
    assert r.status_code == 413
    assert [e for e in s.foundry.journal if e.raw_path == "/openai/v1/files"] == []
    # Under the limit, a chunked upload larger than the replay buffer streams through.
    r = httpx2.post(s.url + "/v1/files", content=iter([b"z" * 300_000, b"z" * 300_000]))
    assert r.status_code == 200
    assert s.foundry.journal[-1].body_len == 600_000
