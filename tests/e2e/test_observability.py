"""/metrics and the access log under real traffic, streamed and not (operations issue)."""

from __future__ import annotations

import json
import re

import httpx2
import pytest

from tests.e2e.stack import Stack, openai_client
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "count my tokens"}]


def _series(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (comments skipped)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _one(series: dict[str, float], name: str, **labels: str) -> float:
    """The value of the one series called ``name`` whose labels include ``labels``."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    found = [
        v
        for k, v in series.items()
        if (k == name or k.startswith(name + "{")) and all(w in k for w in wanted)
    ]
    assert len(found) == 1, (name, labels, [k for k in series if k.startswith(name)])
    return found[0]


def _access_lines(log: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith('{"time":')]


def test_metrics_and_access_log_follow_real_traffic(fresh_stack: Stack) -> None:
    s = fresh_stack
    proxy = s.start_proxy()
    client = openai_client(s)
    plain = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    streamed_usage = None
    for chunk in client.chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            streamed_usage = chunk.usage
    assert plain.usage is not None
    assert streamed_usage is not None
    given_id = "3f6b1c1e-0000-4000-8000-000000000001"
    httpx2.post(
        s.url + "/v1/chat/completions?api-key=CANARY-SECRET-in-a-query",
        json={"model": "gpt-test", "messages": MESSAGES},
        headers={"x-ms-client-request-id": given_id},
    )
    assert httpx2.get(s.url + "/nowhere").status_code == 404
    # Four requests so far; their access lines are written by a thread: wait for them.
    assert wait_until(lambda: len(_access_lines(proxy.log)) >= 4, 5)

    series = _series(httpx2.get(s.url + "/metrics").text)
    assert _one(series, "foundry_proxy_requests_total", route="v1", streamed="true") == 1
    assert (
        _one(series, "foundry_proxy_requests_total", route="v1", streamed="false", status="2xx")
        == 2
    )
    assert _one(series, "foundry_proxy_requests_total", route="none", status="4xx") == 1
    assert _one(series, "foundry_proxy_request_duration_seconds_count", route="v1") == 3
    assert _one(series, "foundry_proxy_time_to_first_byte_seconds_count", route="v1") == 3
    assert _one(series, "foundry_proxy_requests_in_flight") == 0
    assert _one(series, "foundry_proxy_open_streams") == 0
    assert _one(series, "foundry_proxy_request_bytes_total") > 0
    assert _one(series, "foundry_proxy_response_bytes_total") > 0
    # Usage: the SDK's own numbers, summed over the three chat answers (the third is the same
    # request as the first, so it used the same tokens).
    prompt = _one(series, "foundry_proxy_model_tokens_total", kind="prompt")
    completion = _one(series, "foundry_proxy_model_tokens_total", kind="completion")
    total = _one(series, "foundry_proxy_model_tokens_total", kind="total")
    assert prompt == 2 * plain.usage.prompt_tokens + streamed_usage.prompt_tokens
    assert completion == 2 * plain.usage.completion_tokens + streamed_usage.completion_tokens
    assert total == prompt + completion
    assert _one(series, "foundry_proxy_upstream_ratelimit_remaining", kind="requests") == 999
    # Token health.
    assert (
        _one(
            series,
            "foundry_proxy_token_refreshes_total",
            outcome="success",
            credential="client secret",
        )
        >= 1
    )
    assert _one(series, "foundry_proxy_token_expires_in_seconds") > 0
    assert _one(series, "foundry_proxy_token_seconds_since_last_refresh") >= 0
    assert _one(series, "foundry_proxy_token_refresh_failing") == 0

    lines = _access_lines(proxy.log)
    assert len(lines) == 4, lines
    by_id = {line["client_request_id"]: line for line in lines}
    mine = by_id[given_id]
    assert mine["path"] == "/v1/chat/completions"  # no query string, ever
    assert mine["status"] == 200
    assert mine["route"] == "v1"
    assert mine["credential"] == "client secret"
    assert mine["apim_request_id"]
    assert mine["model"]
    assert isinstance(mine["duration_ms"], float)
    assert isinstance(mine["ttfb_ms"], float)
    assert "CANARY-SECRET-in-a-query" not in proxy.log
    streamed = [line for line in lines if line["streamed"]]
    assert len(streamed) == 1
    assert streamed[0]["tokens"] == streamed_usage.total_tokens
    # Every id went upstream too, generated ones included.
    upstream_ids = {e.header("x-ms-client-request-id")[0] for e in s.foundry.journal}
    assert {line["client_request_id"] for line in lines if line["route"] == "v1"} <= upstream_ids
    assert re.fullmatch(r"[0-9a-f-]{36}", str(lines[0]["client_request_id"]))


def test_upstream_failures_are_counted_by_kind(fresh_stack: Stack) -> None:
    s = fresh_stack
    s.start_proxy()
    s.foundry_server.stop()
    reply = httpx2.post(s.url + "/v1/chat/completions", json={"model": "m", "messages": []})
    assert reply.status_code == 502
    series = _series(httpx2.get(s.url + "/metrics").text)
    assert _one(series, "foundry_proxy_upstream_errors_total", kind="upstream_unreachable") == 1
    assert _one(series, "foundry_proxy_requests_total", status="5xx") == 1


def test_text_access_log_and_metrics_off(fresh_stack: Stack) -> None:
    s = fresh_stack
    s.env |= {"FOUNDRY_PROXY_ACCESS_LOG": "text", "FOUNDRY_PROXY_METRICS": "false"}
    proxy = s.start_proxy()
    httpx2.post(s.url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert wait_until(lambda: "POST /v1/chat/completions 200 " in proxy.log, 5)
    assert httpx2.get(s.url + "/metrics").status_code == 404


def test_usage_of_a_large_json_answer_is_counted(fresh_stack: Stack) -> None:
    """A 2 MiB-plus JSON answer: the proxy keeps only its head and tail, and still counts it."""
    s = fresh_stack
    proxy = s.start_proxy()
    reply = httpx2.post(
        s.url + "/v1/chat/completions",
        json={"model": "gpt-test", "messages": MESSAGES},
        headers={"x-fake-chunks": "300000"},
        timeout=60,
    )
    assert reply.status_code == 200
    assert len(reply.content) > 2 * 1024 * 1024
    usage = reply.json()["usage"]
    assert usage["completion_tokens"] > 0
    assert wait_until(lambda: len(_access_lines(proxy.log)) >= 1, 5)
    series = _series(httpx2.get(s.url + "/metrics").text)
    assert _one(series, "foundry_proxy_model_tokens_total", kind="prompt") == usage["prompt_tokens"]
    assert (
        _one(series, "foundry_proxy_model_tokens_total", kind="completion")
        == usage["completion_tokens"]
    )
    line = _access_lines(proxy.log)[0]
    assert line["tokens"] == usage["total_tokens"]
    assert line["model"] == reply.json()["model"]
