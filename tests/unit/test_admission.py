"""The admission gate (proxy/admission.py) on its own: one decision for HTTP requests and
Realtime handshakes, each refusal with its status, code, message and headers, and the slots."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from proxy.admission import Admission, Gate, Refusal
from proxy.exchange import Exchange
from proxy.policy import Policy
from proxy.settings import Settings, load_settings

GOOD = {
    "upstream": "https://myres.openai.azure.com",
    "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "client_id": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    "client_secret": "abc~DEF123",
}
KEY = "local-inbound-key-0123"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("AZURE_", "FOUNDRY_PROXY_")):
            monkeypatch.delenv(key)


def gate(**values: object) -> tuple[Gate, Settings]:
    settings = load_settings(**GOOD | values)
    return Gate(settings, Policy(*settings.rules())), settings


def scope(
    path: str,
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    raw, _, query = path.partition("?")
    return {
        "type": "http",
        "method": method,
        "http_version": "1.1",
        "raw_path": raw.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1:8787"), *(headers or [])],
        "server": ("127.0.0.1", 8787),
    } | extra


def judge(g: Gate, s: dict[str, Any]) -> tuple[Admission | Refusal, Exchange]:
    x = Exchange(s.get("method", "GET"), s["raw_path"].decode(), "none", time.perf_counter())
    return g.admit(s, x), x


def refused(g: Gate, s: dict[str, Any]) -> Refusal:
    decision, _ = judge(g, s)
    assert isinstance(decision, Refusal), decision
    return decision


def test_an_admitted_request_gets_its_token_scope_route_and_a_request_id() -> None:
    g, settings = gate()
    decision, x = judge(g, scope("/v1/chat/completions"))
    assert isinstance(decision, Admission)
    assert decision.target.path == "/openai/v1/chat/completions"
    assert decision.token_scope == settings.scope
    assert not decision.anthropic
    assert x.route == "v1"
    assert UUID4.match(x.client_request_id)
    assert ("x-ms-client-request-id", x.client_request_id) in decision.inbound.headers
    claude, x = judge(g, scope("/anthropic/v1/messages"))
    assert isinstance(claude, Admission)
    assert claude.token_scope == settings.projects_scope
    assert claude.anthropic
    assert x.route == "anthropic"


def test_a_client_request_id_is_kept_and_generated_ids_differ() -> None:
    g, _ = gate()
    sent = [(b"x-ms-client-request-id", b"mine-1")]
    decision, x = judge(g, scope("/v1/chat/completions", headers=sent))
    assert isinstance(decision, Admission)
    assert x.client_request_id == "mine-1"
    assert [v for k, v in decision.inbound.headers if k == "x-ms-client-request-id"] == ["mine-1"]
    ids = {judge(g, scope("/v1/chat/completions"))[1].client_request_id for _ in range(200)}
    assert len(ids) == 200
    assert all(UUID4.match(i) for i in ids)


def test_a_websocket_scope_is_judged_as_a_get() -> None:
    g, _ = gate(policy="default")
    ws = scope("/v1/realtime?model=dep", type="websocket")
    del ws["method"]
    decision, x = judge(g, ws)
    assert isinstance(decision, Admission)
    assert x.deployment == ""
    assert UUID4.match(x.client_request_id)


@pytest.mark.parametrize(
    ("path", "method", "status", "code", "header"),
    [
        ("/nowhere", "GET", 404, "not_found", None),
        ("/v1/chat/completion", "POST", 404, "not_found", None),
        ("/v1/%2e%2e/models", "GET", 400, "invalid_request", None),
        ("/v1/files/file-1", "DELETE", 405, "method_not_allowed", (b"allow", b"GET")),
        ("/v1/fine_tuning/jobs", "POST", 403, "operation_not_allowed", None),
    ],
)
def test_routes_and_policy(
    path: str, method: str, status: int, code: str, header: tuple[bytes, bytes] | None
) -> None:
    g, _ = gate(policy="default")
    refusal = refused(g, scope(path, method))
    assert (refusal.reply.status, refusal.reply.code) == (status, code)
    if status == 404:
        assert "did you mean" in refusal.reply.message or "nearest" in refusal.reply.message
    if header is not None:
        allow = dict(refusal.reply.headers)[header[0]]
        assert header[1] in allow.split(b", ")
        assert method.encode() not in allow.split(b", ")


def test_untrustworthy_framing_is_refused_and_the_connection_closed() -> None:
    g, _ = gate()
    both = [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")]
    refusal = refused(g, scope("/v1/chat/completions", headers=both))
    assert refusal.reply.status == 400
    assert (b"connection", b"close") in refusal.reply.headers
    refusal = refused(g, scope("/v1/chat/completions", http_version="2"))
    assert refusal.reply.status == 400


def test_web_pages_are_refused() -> None:
    g, _ = gate(allowed_origins="https://mine.example")
    rebound = [(b"host", b"evil.example")]
    s = scope("/v1/models", "GET")
    s["headers"] = rebound
    assert refused(g, s).reply.code == "forbidden_host"
    page = [(b"origin", b"https://evil.example")]
    assert refused(g, scope("/v1/models", "GET", page)).reply.code == "forbidden_origin"
    cross = [(b"sec-fetch-site", b"cross-site")]
    assert refused(g, scope("/v1/models", "GET", cross)).reply.code == "forbidden_origin"
    mine = [(b"origin", b"https://mine.example/")]
    assert isinstance(judge(g, scope("/v1/models", "GET", mine))[0], Admission)
    # Over a Unix socket no browser can be the caller.
    unix = scope("/v1/models", "GET", server=("proxy.sock", None))
    unix["headers"] = rebound
    assert isinstance(judge(g, unix)[0], Admission)


def test_inbound_keys_and_the_same_401_everywhere() -> None:
    g, _ = gate(api_keys=KEY)
    for headers in ([], [(b"api-key", b"X" * len(KEY))]):
        refusal = refused(g, scope("/v1/chat/completions", headers=headers))
        assert (refusal.reply.status, refusal.reply.code) == (401, "invalid_api_key")
        assert refusal.reply.message.startswith("foundry-proxy requires an inbound key")
        assert (b"www-authenticate", b'Bearer realm="foundry-proxy"') in refusal.reply.headers
    for header in (b"api-key", b"x-api-key"):
        assert isinstance(
            judge(g, scope("/v1/models", "GET", [(header, KEY.encode())]))[0], Admission
        )
    bearer = [(b"authorization", b"Bearer " + KEY.encode())]
    assert isinstance(judge(g, scope("/v1/models", "GET", bearer))[0], Admission)
    assert g.key_ok(["wrong", KEY])
    assert not g.key_ok(None)


def test_refusals_on_claude_routes_are_in_anthropics_shape() -> None:
    g, _ = gate(api_keys=KEY, policy="default")
    refusal = refused(g, scope("/anthropic/v1/messages"))
    assert refusal.anthropic
    body = json.loads(refusal.reply.body(anthropic=refusal.anthropic))
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["code"] == "invalid_api_key"
    assert not refused(g, scope("/v1/chat/completions")).anthropic
    # An Anthropic call outside /anthropic/ is answered in its shape too.
    elsewhere = refused(g, scope("/v1/messages", headers=[(b"api-key", KEY.encode())]))
    assert elsewhere.anthropic
    assert elsewhere.reply.code == "anthropic_base_url"


def test_slots_are_shared_and_the_wait_is_bounded() -> None:
    g, _ = gate(max_concurrency=2, pool_size=2, queue_timeout=0.2)

    async def run() -> None:
        assert await g.take_slot() is None
        assert await g.take_slot() is None
        began = time.monotonic()
        full = await g.take_slot()
        assert time.monotonic() - began >= 0.15
        assert full is not None
        assert (full.status, full.code) == (503, "upstream_pool_exhausted")
        assert (b"retry-after", b"1") in full.headers
        assert "FOUNDRY_PROXY_MAX_CONCURRENCY" in full.message
        # A slot given back while one waits goes to the waiter.
        waiter = asyncio.ensure_future(g.take_slot())
        await asyncio.sleep(0.01)
        g.release_slot()
        assert await waiter is None

    asyncio.run(run())
