"""What clients can make the proxy write about them, attacked over real sockets: metric series
named after invented deployments, access-log records forged with line breaks, credentials in
headers logged at DEBUG.

Each attack is bounded in count. Figures are printed (``pytest -s``) for docs/security.md's
resource-bounds table.
"""

from __future__ import annotations

import json

import httpx2
import pytest

from tests.e2e.stack import Stack, serving
from tests.security.floods import CHAT, eventually
from tests.support.rawsock import exchange, request

pytestmark = pytest.mark.e2e


def _series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


# -- metric series -------------------------------------------------------------------------------


def test_invented_deployment_names_do_not_grow_the_metrics(quiet: Stack) -> None:
    """300 deployments answered, 200 more refused with 404: the ratelimit series stay within
    FOUNDRY_PROXY_METRICS_MAX_MODELS (default 100) plus "other", and no refused name gets a
    series. (The fake's hop-headers path answers 200 with x-ratelimit-remaining-requests.)"""
    with httpx2.Client(base_url=quiet.url, timeout=10) as client:
        for i in range(300):
            reply = client.post(f"/openai/deployments/dep{i}/hop-headers", json=CHAT)
            assert reply.status_code == 200, reply.text
        for i in range(200):
            reply = client.post(f"/openai/deployments/gone{i}/status/404", json=CHAT)
            assert reply.status_code == 404, reply.text
        page = client.get("/metrics")
    text = page.text
    ratelimit = _series(text, "foundry_proxy_upstream_ratelimit_remaining")
    print(
        f"\nmetric series after 500 invented deployment names: {len(ratelimit)} ratelimit "
        f"series; /metrics {len(page.content) // 1024} KiB"
    )
    labels = {line.split('deployment="', 1)[1].split('"', 1)[0] for line in ratelimit}
    assert len(labels) <= 101, len(labels)
    assert "other" in labels
    assert not any(label.startswith("gone") for label in labels), "a 404 minted a series"
    assert len(page.content) < 256 * 1024
    folded = [line for line in text.splitlines() if line.startswith("foundry_proxy_metric_labels")]
    assert folded, "nothing says that labels were folded"
    assert float(folded[0].rsplit(" ", 1)[1]) >= 200


def test_the_model_label_limit_is_a_setting() -> None:
    for s in serving(Stack(FOUNDRY_PROXY_ACCESS_LOG="off", FOUNDRY_PROXY_METRICS_MAX_MODELS="3")):
        with httpx2.Client(base_url=s.url, timeout=10) as client:
            for i in range(10):
                client.post(f"/openai/deployments/dep{i}/hop-headers", json=CHAT)
            text = client.get("/metrics").text
        ratelimit = _series(text, "foundry_proxy_upstream_ratelimit_remaining")
        labels = {line.split('deployment="', 1)[1].split('"', 1)[0] for line in ratelimit}
        assert labels == {"dep0", "dep1", "dep2", "other"}, labels


# -- access-log records --------------------------------------------------------------------------

# What an HTTP header value may carry (RFC 9110 section 5.5: tab, and any byte from 0x80 up,
# so UTF-8 line separators, C1 controls and bidi overrides) that a log reader could take for a
# line break or use to hide text; each followed by text that would pass for a record. CR and LF
# cannot be sent in a header: tests/unit/test_access.py feeds them to the access log directly.
FORGERIES = [
    "a\u2028FORGED GET /admin 200",
    "b\u0085FORGED GET /admin 200",
    "c\u2029FORGED GET /admin 200",
    "d\tFORGED\u202e GET /admin 200",
    "e\u200bFORGED\u2066 GET /admin 200",
]


def _forge(s: Stack, marker: str) -> None:
    """Five requests whose x-ms-client-request-id carries a forgery, as raw UTF-8 bytes."""
    assert s.proxy is not None
    for forgery in FORGERIES:
        body = json.dumps(CHAT).encode()
        raw = request(
            f"POST /v1/{marker}/status/400 HTTP/1.1",
            "Content-Type: application/json",
            b"x-ms-client-request-id: " + forgery.encode(),
            f"Content-Length: {len(body)}",
            body=body,
        )
        ex = exchange(s.proxy.port, raw)
        assert ex.statuses == [400], (forgery, ex.text[:500])


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_five_records_stay_five_lines(fmt: str) -> None:
    for s in serving(Stack(FOUNDRY_PROXY_ACCESS_LOG=fmt, FOUNDRY_PROXY_LOG_LEVEL="info")):
        assert s.proxy is not None
        marker = f"forge-{fmt}"
        _forge(s, marker)
        proxy = s.proxy
        assert eventually(lambda: proxy.log.count(marker) >= 5), proxy.log[-3000:]  # noqa: B023
        lines = proxy.log.splitlines()  # every line break Python knows, U+2028 included
        records = [line for line in lines if marker in line]
        print(f"\n{fmt} access log, 5 forged records: {records[0][:200]!r}")
        assert len(records) == 5, records
        forged = [line for line in lines if "FORGED" in line and marker not in line]
        assert not forged, forged
        for line in records:
            assert line.isprintable(), repr(line)
            if fmt == "json":
                record = json.loads(line)
                assert record["client_request_id"] in FORGERIES
                assert line.isascii(), repr(line)


def test_access_log_fields_have_bounded_lengths() -> None:
    for s in serving(Stack(FOUNDRY_PROXY_ACCESS_LOG="text", FOUNDRY_PROXY_LOG_LEVEL="info")):
        assert s.proxy is not None
        reply = httpx2.post(
            s.url + "/v1/long-id/status/400",
            json={"model": "m" * 20_000, "messages": []},
            headers={"x-ms-client-request-id": "i" * 20_000},
            timeout=10,
        )
        assert reply.status_code == 400
        proxy = s.proxy
        assert eventually(lambda: "/v1/long-id/status/400" in proxy.log)  # noqa: B023
        [line] = [line for line in proxy.log.splitlines() if "/v1/long-id/" in line]
        assert len(line) < 1024, len(line)


# -- credential-like headers at DEBUG -------------------------------------------------------------

CANARY_HEADERS = {
    "x-functions-key": "CANARY-SECRET-fn-key-0001",
    "x-auth-token": "CANARY-SECRET-auth-token-0002",
    "token": "CANARY-SECRET-token-0003",
    "x-client-secret": "CANARY-SECRET-client-secret-0004",
    "x-goog-api-key": "CANARY-SECRET-goog-0005",
    "x-custom-credential": "CANARY-SECRET-custom-0006",
    "proxy-authorization": "Basic CANARY-SECRET-proxy-0007",
}


def test_credential_like_headers_never_reach_the_debug_log() -> None:
    """At DEBUG the WebSocket handshake is logged header by header: only harmless headers keep
    their values (an allow-list), so headers no list names are redacted too."""
    from tests.e2e.test_realtime import running, session_on, start

    with running(start()) as rt:
        assert rt.s.proxy is not None
        with session_on(
            rt,
            "/v1/realtime?model=dep",
            additional_headers=CANARY_HEADERS,
            user_agent_header="harmless-agent/1.0",
        ) as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
        httpx2.post(rt.s.url + "/v1/chat/completions", json=CHAT, headers=CANARY_HEADERS)
        assert eventually(lambda: "harmless-agent/1.0" in rt.s.proxy.log)  # type: ignore[union-attr]
        log = rt.s.proxy.log
        leaked = [name for name, value in CANARY_HEADERS.items() if value.split()[-1] in log]
        assert not leaked, leaked
        assert "< x-functions-key: [redacted]" in log
