"""Requests the listener answers itself while the app has them (a body too slow, bad chunk
framing, trailers too large) are logged and counted with the status the client got, not as 0.

Each request carries its own x-ms-client-request-id, by which its access line is found.
"""

from __future__ import annotations

import json
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


def _requests_4xx(s: Stack) -> float:
    """foundry_proxy_requests_total for the v1 route's 4xx answers to POST."""
    text = httpx2.get(s.url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("foundry_proxy_requests_total{") and all(
            label in line for label in ('route="v1"', 'status="4xx"', 'method="POST"')
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
    counted = _requests_4xx(logged)
    # One byte every 0.3 s against a minimum of 500 bytes/s over 2 s windows.
    pieces = [_post_head(request_id, "Content-Length: 100")] + [b"x"] * 30
    ex = _refused(logged, pieces, 0.3, 408)
    assert json.loads(ex.responses[0].body)["error"]["code"] == "request_timeout"
    line = _access_line(logged, request_id)
    assert line["status"] == 408
    assert line["path"] == CHAT_PATH
    assert _requests_4xx(logged) == counted + 1


def test_bad_chunk_framing_after_the_app_started_is_logged_400(logged: Stack) -> None:
    request_id = "9a7c0de1-0000-4000-8000-000000000400"
    counted = _requests_4xx(logged)
    head = _post_head(request_id, "Transfer-Encoding: chunked")
    # The head and a good chunk start the request; the next chunk's size is not hex.
    _refused(logged, [head + b"2\r\n{}\r\n", b"zz\r\nxx\r\n0\r\n\r\n"], 0.2, 400)
    assert _access_line(logged, request_id)["status"] == 400
    assert _requests_4xx(logged) == counted + 1


def test_trailers_too_large_are_logged_431(logged: Stack) -> None:
    request_id = "9a7c0de1-0000-4000-8000-000000000431"
    head = _post_head(request_id, "Transfer-Encoding: chunked")
    # A trailer field that never ends, after the last chunk: bounded like a head.
    endless = [b"X-Big: "] + [b"a" * 65536] * 4
    _refused(logged, [head + b"2\r\n{}\r\n0\r\n", *endless], 0.05, 431)
    assert _access_line(logged, request_id)["status"] == 431
