"""Requests the listener answers itself while the app has them (a body too slow, bad chunk
framing, trailers too large, the request-body budget spent) are logged and counted with the
status the client got, not as 0.

Each request carries its own x-ms-client-request-id, by which its access line is found.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import httpx2
import pytest

from tests.e2e.stack import Stack, serving
from tests.support.chat import CHAT_PATH
from tests.support.rawsock import Exchange, exchange, request
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def logged() -> Iterator[Stack]:
    yield from serving(Stack(FOUNDRY_PROXY_BODY_TIMEOUT="2", FOUNDRY_PROXY_ACCESS_LOG="json"))


def _access_line(s: Stack, request_id: str) -> dict[str, object]:
    assert s.proxy is not None
    proxy = s.proxy

    def found() -> list[dict[str, object]]:
        lines = [json.loads(x) for x in proxy.log.splitlines() if x.startswith('{"time":')]
        return [x for x in lines if x["client_request_id"] == request_id]

    assert wait_until(found, 10), proxy.log[-2000:]
    (line,) = found()
    return line


def _requests_counted(s: Stack, status: str = "4xx") -> float:
    """foundry_proxy_requests_total for the v1 route's 4xx (or ``status``) answers to POST."""
    text = httpx2.get(s.url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("foundry_proxy_requests_total{") and all(
            label in line for label in ('route="v1"', f'status="{status}"', 'method="POST"')
        ):
            total += float(line.rpartition(" ")[2])
    return total


def _post_head(request_id: str, *framing: str) -> bytes:
    return request(
        f"POST {CHAT_PATH} HTTP/1.1",
        "Content-Type: application/json",
        f"x-ms-client-request-id: {request_id}",
        *framing,
    )


def _refused(s: Stack, pieces: list[bytes], pause: float, status: int) -> Exchange:
    assert s.proxy is not None
    before = len(s.foundry.journal)
    ex = exchange(s.proxy.port, pieces, pause=pause, timeout=15)
    assert ex.statuses == [status], ex.text[:500]
    assert ex.closed
    assert len(s.foundry.journal) == before, "the refused request reached the upstream"
    return ex


def test_a_body_too_slow_is_logged_408(logged: Stack) -> None:
    request_id = "9a7c0de1-0000-4000-8000-000000000408"
    counted = _requests_counted(logged)
    # One byte every 0.3 s against a minimum of 500 bytes/s over 2 s windows.
    pieces = [_post_head(request_id, "Content-Length: 100")] + [b"x"] * 30
    ex = _refused(logged, pieces, 0.3, 408)
    assert json.loads(ex.responses[0].body)["error"]["code"] == "request_timeout"
    line = _access_line(logged, request_id)
    assert line["status"] == 408
    assert line["path"] == CHAT_PATH
    assert _requests_counted(logged) == counted + 1


def test_bad_chunk_framing_after_the_app_started_is_logged_400(logged: Stack) -> None:
    request_id = "9a7c0de1-0000-4000-8000-000000000400"
    counted = _requests_counted(logged)
    head = _post_head(request_id, "Transfer-Encoding: chunked")
    # The head and a good chunk start the request; the next chunk's size is not hex.
    _refused(logged, [head + b"2\r\n{}\r\n", b"zz\r\nxx\r\n0\r\n\r\n"], 0.2, 400)
    assert _access_line(logged, request_id)["status"] == 400
    assert _requests_counted(logged) == counted + 1


def test_trailers_too_large_are_logged_431(logged: Stack) -> None:
    request_id = "9a7c0de1-0000-4000-8000-000000000431"
    head = _post_head(request_id, "Transfer-Encoding: chunked")
    # A trailer field that never ends, after the last chunk: bounded like a head.
    endless = [b"X-Big: "] + [b"a" * 65536] * 4
    _refused(logged, [head + b"2\r\n{}\r\n0\r\n", *endless], 0.05, 431)
    assert _access_line(logged, request_id)["status"] == 431


KIB = 1024


@pytest.fixture(scope="module")
def tight_budget() -> Iterator[Stack]:
    # Room for one body of 200 KiB beyond each request's free 16 KiB, not two.
    yield from serving(
        Stack(FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES=str(300 * KIB), FOUNDRY_PROXY_ACCESS_LOG="json")
    )


def _buffered_bytes(s: Stack) -> float:
    text = httpx2.get(s.url + "/metrics", timeout=10).text
    found = re.search(r"^foundry_proxy_request_body_buffered_bytes (\S+)$", text, re.MULTILINE)
    assert found is not None, "foundry_proxy_request_body_buffered_bytes not in /metrics"
    return float(found.group(1))


def test_body_budget_spent_is_logged_503(tight_budget: Stack) -> None:
    """A request whose body finds FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES spent (by another one
    holding 200 KiB of a body it never finishes) is answered 503 by the listener, and logged
    and counted as 503."""
    assert tight_budget.proxy is not None
    request_id = "9a7c0de1-0000-4000-8000-000000000503"
    counted = _requests_counted(tight_budget, "5xx")
    holder_head = _post_head("9a7c0de1-0000-4000-8000-0000000000ff", f"Content-Length: {300 * KIB}")
    with socket.create_connection(("127.0.0.1", tight_budget.proxy.port), timeout=5) as holder:
        # Held until the body deadline (FOUNDRY_PROXY_BODY_TIMEOUT, 20 s by default).
        holder.sendall(holder_head + b"x" * (200 * KIB))
        assert wait_until(lambda: _buffered_bytes(tight_budget) > 150 * KIB, 10)
        head = _post_head(request_id, f"Content-Length: {200 * KIB}")
        ex = _refused(tight_budget, [head + b"x" * (200 * KIB)], 0, 503)
    assert json.loads(ex.responses[0].body)["error"]["code"] == "body_buffers_full"
    line = _access_line(tight_budget, request_id)
    assert line["status"] == 503
    assert line["path"] == CHAT_PATH
    assert _requests_counted(tight_budget, "5xx") == counted + 1
