"""The token lifecycle seen from outside: rollover under load, Entra outages, bad secrets, 401s.

Tokens here live seconds, not an hour, so hours of refresh behaviour fit in a test run.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from tests.e2e.stack import Stack, chat_load
from tests.fakes.entra import Answer, entra_error
from tests.support.chat import CHAT
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e

OUTAGE = Answer(503, {"error": "temporarily_unavailable", "error_description": "AADSTS90033: busy"})


def test_rollover_under_continuouschat_load(fresh_stack: Stack) -> None:
    """E44: 4 s tokens for 12 s of load: no failed request, no expired token upstream."""
    s = fresh_stack
    s.entra.token_lifetime = 4
    s.start_proxy()
    started = time.monotonic()
    ok, failures = chat_load(s.url, 12)
    elapsed = time.monotonic() - started
    assert failures == []
    assert ok > 50
    refused = [e.auth for e in s.foundry.journal if e.auth != "ok"]
    assert refused == [], "the upstream saw an expired or unknown token"
    serials = {e.token_serial for e in s.foundry.journal}
    assert len(serials) >= 4, "tokens were not rolled over"
    # Refresh at half-life (~2 s): about elapsed/2 calls plus the first; never a storm.
    assert len(s.entra.calls) <= elapsed / 1.6 + 2


def test_entra_outage_while_token_valid(fresh_stack: Stack) -> None:
    """E45: Entra down while the token is valid: 0 failures, ready throughout, bounded calls."""
    s = fresh_stack
    s.entra.token_lifetime = 8
    s.start_proxy()
    s.entra.outage = OUTAGE
    outage_start = time.monotonic()
    readiness: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            readiness.append(httpx2.get(s.url + "/readyz").status_code)
            time.sleep(0.1)

    prober = threading.Thread(target=probe)
    prober.start()
    ok, failures = chat_load(s.url, 5)
    stop.set()
    prober.join()
    assert failures == []
    assert ok > 20
    assert set(readiness) == {200}
    # Refresh attempts start at half-life (4 s in) and back off: a handful, not a hot loop.
    assert len(s.entra.calls_since(outage_start)) <= 4
    assert s.proxy is not None
    assert "temporarily_unavailable" in s.proxy.log


def test_outage_past_expiry_then_recovery(fresh_stack: Stack) -> None:
    """E47: once the token runs out, 503 token_unavailable with Retry-After; then recovery."""
    s = fresh_stack
    s.entra.token_lifetime = 3
    s.start_proxy()
    s.entra.outage = OUTAGE
    deadline = time.monotonic() + 8
    while httpx2.get(s.url + "/readyz").status_code == 200:
        assert time.monotonic() < deadline, "readiness never dropped after expiry"
        time.sleep(0.05)
    r = httpx2.post(s.url + "/v1/chat/completions", json=CHAT, timeout=20)
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "token_unavailable"
    assert "temporarily_unavailable" in error["message"]
    assert int(r.headers["retry-after"]) in range(1, 121)
    assert httpx2.get(s.url + "/healthz").status_code == 200
    s.entra.outage = None
    assert s.proxy is not None
    s.proxy.wait_ready(timeout=15)
    assert httpx2.post(s.url + "/v1/chat/completions", json=CHAT).status_code == 200


def test_unreachable_entra_reaches_the_openai_sdk_in_seconds(fresh_stack: Stack) -> None:
    """Entra refusing connections and no token: the openai SDK with its default retries (2)
    raises the 503 within seconds, not after the token wait times each of its tries; the
    answer tells the SDK not to retry and when the proxy asks for a token again."""
    import openai

    s = fresh_stack
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        s.env["AZURE_AUTHORITY_HOST"] = f"http://127.0.0.1:{closed.getsockname()[1]}"
        proxy = s.start_proxy(ready=False)
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused")
        s.clients.append(client)
        timings = []
        for _ in range(2):  # the first while the proxy has just started, then in the outage
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
            timings.append(time.monotonic() - started)
            reply = info.value.response
            assert reply.status_code == 503
            assert reply.headers["x-should-retry"] == "false"
            assert int(reply.headers["retry-after"]) in range(2, 13)
            error = reply.json()["error"]
            assert error["code"] == "token_unavailable"
            assert "asks for a token again in" in error["message"]
        print(f"time to the openai SDK's error: {timings[0]:.2f} s, then {timings[1]:.2f} s")
        # FOUNDRY_PROXY_TOKEN_WAIT is 10 s: waiting it out even once would exceed this.
        assert timings[0] < 8
        assert timings[1] < 8

        def logged() -> list[str]:
            return [line for line in proxy.lines if '"path":"/v1/chat/completions"' in line]

        # Access lines are written in batches: wait for both, then for any retry's.
        assert wait_until(lambda: len(logged()) >= 2, 10), proxy.log
        time.sleep(0.5)
        assert len(logged()) == 2, "the SDK retried although told not to"
        assert s.foundry.journal == []


def test_bad_secret_is_reported_without_hot_loop(fresh_stack: Stack) -> None:
    """E48: a wrong secret: not ready, 503 naming AADSTS7000215, one token call, alive."""
    s = fresh_stack
    wrong = "CANARY-SECRET-wrong-" + s.secret[-20:]
    s.env["AZURE_CLIENT_SECRET"] = wrong
    proxy = s.start_proxy(ready=False)
    time.sleep(0.5)
    ready = httpx2.get(s.url + "/readyz")
    assert ready.status_code == 503
    assert "AADSTS7000215" in ready.json()["reason"]
    assert "Secret ID" in ready.json()["fix"]
    started = time.monotonic()
    r = httpx2.post(s.url + "/v1/chat/completions", json=CHAT, timeout=20)
    assert time.monotonic() - started < 2, "a request waited although retrying cannot help"
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "token_unavailable"
    assert "AADSTS7000215" in r.json()["error"]["message"]
    assert r.headers["x-should-retry"] == "false"
    time.sleep(2.5)
    assert len(s.entra.calls) == 1, "a configuration error must back off, not hot-loop"
    assert proxy.proc.poll() is None
    assert s.foundry.journal == []
    for text in (ready.text, r.text, proxy.log):
        assert wrong not in text
        assert s.secret not in text


def test_cold_burst_makes_one_token_call(fresh_stack: Stack) -> None:
    """E43: 500 requests arriving before the first token all wait for one single call."""
    import asyncio

    s = fresh_stack
    s.entra.delay = 1.0
    s.start_proxy(ready=False)

    async def burst() -> list[int]:
        limits = httpx2.Limits(max_connections=500, max_keepalive_connections=500)
        async with httpx2.AsyncClient(timeout=30, limits=limits) as client:
            replies = await asyncio.gather(
                *(client.post(s.url + "/v1/chat/completions", json=CHAT) for _ in range(500))
            )
        return [r.status_code for r in replies]

    assert asyncio.run(burst()) == [200] * 500
    assert len(s.entra.calls) == 1


def test_revoked_token_is_refreshed_and_request_replayed(fresh_stack: Stack) -> None:
    """E52: an upstream 401 of the Entra-token shape: one refresh, one replay, no loop."""
    s = fresh_stack
    s.start_proxy()
    assert httpx2.post(s.url + "/v1/chat/completions", json=CHAT).status_code == 200
    calls = len(s.entra.calls)
    s.issuer.revoke_all()
    r = httpx2.post(s.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    assert len(s.entra.calls) == calls + 1
    last_two = s.foundry.entries("/chat/completions")[-2:]
    assert [e.auth for e in last_two] == ["revoked", "ok"]
    assert last_two[0].body_sha256 == last_two[1].body_sha256
    # Revoked again at once: the forced refresh is rate-limited, so the 401 passes through
    # after a single upstream attempt instead of looping.
    s.issuer.revoke_all()
    before = len(s.foundry.journal)
    r = httpx2.post(s.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 401
    assert r.json()["statusCode"] == 401
    assert len(s.foundry.journal) == before + 1


def test_permission_denied_is_passed_through_without_refresh(fresh_stack: Stack) -> None:
    """E53: a missing role is not a token problem: no refresh, no replay."""
    s = fresh_stack
    s.start_proxy()
    calls = len(s.entra.calls)
    r = httpx2.post(s.url + "/openai/v1/denied", json=CHAT)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "PermissionDenied"
    assert len(s.entra.calls) == calls
    assert len(s.foundry.entries("/denied")) == 1


def test_malformed_token_answers_keep_the_old_token(fresh_stack: Stack) -> None:
    """E49: garbage from Entra counts as a failure; the valid token keeps serving."""
    s = fresh_stack
    s.entra.token_lifetime = 6
    s.start_proxy()
    s.entra.script.extend(
        [
            Answer(200, raw=b"<html>not json</html>"),
            Answer(200, {"token_type": "Bearer", "expires_in": 3600}),
            Answer(200, {"access_token": "x", "expires_in": -5}),
            entra_error(400, "invalid_request", 90002, "Tenant not found."),
        ]
    )
    ok, failures = chat_load(s.url, 4, workers=2)
    assert failures == []
    assert ok > 10
    assert httpx2.get(s.url + "/readyz").status_code == 200


def test_gzipped_token_rejection_is_recognised(fresh_stack: Stack) -> None:
    """The client's Accept-Encoding reaches the upstream, so its 401 may come compressed."""
    s = fresh_stack
    s.foundry.gzip_401 = True
    s.start_proxy()
    headers = {"accept-encoding": "gzip"}
    assert (
        httpx2.post(s.url + "/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    )
    s.issuer.revoke_all()
    r = httpx2.post(s.url + "/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 200
    assert [e.auth for e in s.foundry.entries("/chat/completions")[-2:]] == ["revoked", "ok"]


def test_concurrent_rejections_are_all_replayed_after_one_refresh(fresh_stack: Stack) -> None:
    s = fresh_stack
    s.start_proxy()
    assert httpx2.post(s.url + "/v1/chat/completions", json=CHAT).status_code == 200
    calls = len(s.entra.calls)
    s.entra.delay = 0.3
    s.issuer.revoke_all()
    with ThreadPoolExecutor(6) as pool:
        statuses = list(
            pool.map(
                lambda _: httpx2.post(s.url + "/v1/chat/completions", json=CHAT).status_code,
                range(6),
            )
        )
    assert statuses == [200] * 6
    assert len(s.entra.calls) == calls + 1
