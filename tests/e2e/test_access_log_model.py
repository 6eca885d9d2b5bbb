"""The access log's model for answers that do not name one: the request body's, when small.

A /v1 stream without ``stream_options.include_usage`` carries no usage event, so the answer
gives no model; the request body (kept whole for replay when small) does.
"""

from __future__ import annotations

import json

import httpx2
import pytest

from tests.e2e.stack import Stack, openai_client
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "hi"}]


def _lines(log: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith('{"time":')]


def _line_for(s: Stack, request_id: str) -> dict[str, object]:
    assert s.proxy is not None
    proxy = s.proxy

    def found() -> list[dict[str, object]]:
        return [x for x in _lines(proxy.log) if x["client_request_id"] == request_id]

    assert wait_until(found, 10), proxy.log[-2000:]
    (line,) = found()
    return line


def test_a_stream_without_usage_is_logged_with_the_requests_model(fresh_stack: Stack) -> None:
    s = fresh_stack
    s.start_proxy()
    client = openai_client(s)
    request_id = "6c1d0c1e-0000-4000-8000-000000000001"
    chunks = list(
        client.chat.completions.create(
            model="my-chat-deployment",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            extra_headers={"x-ms-client-request-id": request_id},
        )
    )
    assert chunks
    assert all(chunk.usage is None for chunk in chunks)
    line = _line_for(s, request_id)
    assert line["streamed"] is True
    assert line["model"] == "my-chat-deployment"
    assert "tokens" not in line


def test_the_answers_model_still_wins(fresh_stack: Stack) -> None:
    s = fresh_stack
    s.start_proxy()
    request_id = "6c1d0c1e-0000-4000-8000-000000000002"
    reply = openai_client(s).chat.completions.create(
        model="my-chat-deployment",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={"x-ms-client-request-id": request_id},
    )
    assert reply.model != "my-chat-deployment"
    assert _line_for(s, request_id)["model"] == reply.model


def test_no_model_from_a_large_body_or_a_name_that_is_no_name(fresh_stack: Stack) -> None:
    """Past 64 KiB the body is not decoded for its model (the cost grows with the size); a
    model that is not a plain name is never logged (the text log would carry whatever it
    holds)."""
    s = fresh_stack
    s.env["FOUNDRY_PROXY_ACCESS_LOG"] = "text"
    proxy = s.start_proxy()
    big = [{"role": "user", "content": "x" * (70 * 1024)}]
    cases = {
        "6c1d0c1e-0000-4000-8000-00000000000a": {"model": "big-body", "messages": big},
        "6c1d0c1e-0000-4000-8000-00000000000b": {
            "model": "evil\nPOST /forged 200 0.1ms",
            "messages": MESSAGES,
        },
        "6c1d0c1e-0000-4000-8000-00000000000c": {"model": "has space", "messages": MESSAGES},
        "6c1d0c1e-0000-4000-8000-00000000000d": {"model": "plain-name", "messages": MESSAGES},
    }
    for request_id, body in cases.items():
        reply = httpx2.post(
            s.url + "/v1/chat/completions",
            json={**body, "stream": True},
            headers={"x-ms-client-request-id": request_id},
            timeout=30,
        )
        assert reply.status_code == 200

    def logged() -> dict[str, str]:
        return {
            line.rsplit(" id=", 1)[1]: line
            for line in proxy.log.splitlines()
            if line.startswith("POST /v1/chat/completions 200") and " id=" in line
        }

    assert wait_until(lambda: set(cases) <= set(logged()), 10), proxy.log[-2000:]
    lines = logged()
    assert "model=" not in lines["6c1d0c1e-0000-4000-8000-00000000000a"]
    assert "model=" not in lines["6c1d0c1e-0000-4000-8000-00000000000b"]
    assert "model=" not in lines["6c1d0c1e-0000-4000-8000-00000000000c"]
    assert " model=plain-name " in lines["6c1d0c1e-0000-4000-8000-00000000000d"]
    assert "/forged" not in proxy.log


def test_a_client_that_leaves_before_the_headers_is_logged_with_status_0(
    fresh_stack: Stack,
) -> None:
    """Status 0 (and status="none" in the metrics) means no answer was started: the client
    went away while the proxy waited for the upstream's headers (or for a token, or a slot)."""
    s = fresh_stack
    s.start_proxy()
    request_id = "6c1d0c1e-0000-4000-8000-000000000010"
    with pytest.raises(httpx2.ReadTimeout):
        httpx2.post(
            s.url + "/openai/v1/slow-to-answer",
            json={"model": "gpt-test", "messages": MESSAGES},
            headers={"x-ms-client-request-id": request_id, "x-fake-first-delay": "5"},
            timeout=httpx2.Timeout(10, read=0.5),
        )
    line = _line_for(s, request_id)
    assert line["status"] == 0
    assert line["ttfb_ms"] is None
    assert line["bytes_out"] == 0
    assert line["model"] == "gpt-test"
    assert float(str(line["duration_ms"])) < 4000, "the upstream request was not abandoned"
    metrics = httpx2.get(s.url + "/metrics").text
    assert 'foundry_proxy_requests_total{method="POST",route="v1",status="none"' in metrics
