"""The Realtime API WebSocket relay: the openai SDK's realtime client and raw WebSocket clients
through the proxy, against a fake Realtime upstream served on the same origin as the fake
Foundry (tests/fakes/realtime.py).

Every socket operation has a timeout; the SDK, which has none for reads, runs under a watchdog
that closes its connection.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx2
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from proxy.emulator.foundry import AI, COGNITIVE
from tests.e2e.stack import CLIENT_ID, TENANT, Stack
from tests.fakes.realtime import FakeRealtime, RealtimeSession, one_origin
from tests.fakes.serve import ServerThread
from tests.support.procfs import rss_kb
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e

KEY = "CANARY-SECRET-realtime-inbound-key-0123"
CLIENT_SECRETS = ("CANARY-SECRET-client-hdr-key", "CANARY-SECRET-client-query-key")
TIMEOUT = 5.0


@dataclass
class RealtimeStack:
    s: Stack
    fake: FakeRealtime
    server: ServerThread

    def ws(self, path: str) -> str:
        return "ws" + self.s.url.removeprefix("http") + path

    def direct(self, path: str) -> str:
        return "ws" + self.server.url.removeprefix("http") + path

    def close(self) -> str:
        try:
            return self.s.close()
        finally:
            self.server.stop()


def start(**env: str) -> RealtimeStack:
    """A stack whose upstream origin serves both the fake Foundry and the fake Realtime API."""
    s = Stack(**env)
    fake = FakeRealtime(s.issuer)
    server = ServerThread(one_origin(s.foundry, fake)).start()
    s.env["FOUNDRY_PROXY_UPSTREAM"] = server.url
    return RealtimeStack(s, fake, server)


@contextmanager
def running(rt: RealtimeStack) -> Iterator[RealtimeStack]:
    try:
        rt.s.start_proxy()
        yield rt
    finally:
        log = rt.close()
        assert not rt.s.leaks(log), "a secret or token reached the proxy's log"
        assert KEY not in log
        for secret in CLIENT_SECRETS:
            assert secret not in log


@pytest.fixture(scope="module")
def rt() -> Iterator[RealtimeStack]:
    with running(start()) as stack:
        yield stack


@contextmanager
def ws_connect(url: str, **kwargs: Any) -> Iterator[ClientConnection]:
    kwargs.setdefault("max_size", None)
    with connect(url, open_timeout=TIMEOUT, close_timeout=2, **kwargs) as ws:
        yield ws


def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    message = ws.recv(timeout=timeout)
    assert isinstance(message, str), f"expected a text message, got {type(message)}"
    return json.loads(message)


@contextmanager
def session_on(rt: RealtimeStack, path: str, **kwargs: Any) -> Iterator[ClientConnection]:
    """A raw client through the proxy, past the upstream's session.created."""
    with ws_connect(rt.ws(path), **kwargs) as ws:
        assert recv_json(ws)["type"] == "session.created"
        yield ws


def closed_by_peer(ws: ClientConnection, timeout: float = TIMEOUT) -> ConnectionClosed:
    deadline = time.monotonic() + timeout
    try:
        while True:  # anything still queued before the close is skipped
            ws.recv(timeout=max(0.0, deadline - time.monotonic()))
    except ConnectionClosed as closed:
        return closed


def ended(session: RealtimeSession, timeout: float = TIMEOUT) -> bool:
    return wait_until(lambda: session.ended is not None, timeout)


def sdk_connect(client: Any) -> Any:
    """The openai SDK's realtime connection manager. legacy=True: the sync SDK calls
    websockets' connect() without ``with``, which websockets >= 17.1 warns about (an error
    here) unless the historical behaviour is asked for."""
    return client.realtime.connect(
        model="gpt-realtime", websocket_connection_options=cast(Any, {"legacy": True})
    )


def bearer_of(s: Stack, session: RealtimeSession) -> None:
    """The upstream handshake carried exactly one bearer token: the proxy's, valid."""
    assert session.header("authorization") == [f"Bearer {session.token}"]
    assert session.token_serial is not None, "not a token the fake Entra issued"
    assert session.auth == "ok", session.auth
    assert session.header("api-key") == []


# -- (a) the openai SDK ----------------------------------------------------------------------


def test_openai_sdk_realtime_session_through_the_proxy(rt: RealtimeStack) -> None:
    from openai import OpenAI

    first = rt.fake.count()
    client = OpenAI(base_url=rt.s.url + "/v1", api_key="anything", max_retries=0)
    rt.s.clients.append(client)
    events: list[Any] = []
    with sdk_connect(client) as connection:
        watchdog = threading.Timer(20, connection.close)
        watchdog.start()
        try:
            connection.session.update(
                session={
                    "type": "realtime",
                    "instructions": "be brief",
                    "output_modalities": ["text"],
                }
            )
            connection.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Say hello"}],
                }
            )
            connection.response.create()
            for event in connection:
                events.append(event)
                if event.type == "response.done":
                    break
        finally:
            watchdog.cancel()
    types = [e.type for e in events]
    assert types[:4] == [
        "session.created",
        "session.updated",
        "conversation.item.created",
        "response.created",
    ], types
    assert types[-1] == "response.done", types
    assert events[0].session.model == "gpt-realtime"
    assert events[1].session.instructions == "be brief"
    assert events[2].item.content[0].text == "Say hello"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "".join(rt.fake.deltas)
    assert events[-1].response.status == "completed"

    session = rt.fake.session(first)
    assert session.path == "/openai/v1/realtime"
    assert session.query == "model=gpt-realtime"
    bearer_of(rt.s, session)
    assert rt.s.issuer.verify(session.token or "", (COGNITIVE,)) is None
    assert "anything" not in repr(session.headers)
    assert "anything" not in session.query
    sent = [json.loads(t)["type"] for t in session.texts]
    assert sent == ["session.update", "conversation.item.create", "response.create"]
    assert ended(session), "closing the SDK connection did not close the upstream session"
    assert session.closed_by == "peer"
    assert session.close_code == 1000


# -- (b) raw clients: frames, closes, handshake ------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000, 2_000_000])
def test_binary_frames_round_trip_byte_identical(rt: RealtimeStack, size: int) -> None:
    first = rt.fake.count()
    payload = os.urandom(size)
    with session_on(rt, "/v1/realtime?model=dep") as ws:
        ws.send(payload)
        echoed = ws.recv(timeout=TIMEOUT)
    assert isinstance(echoed, bytes), "a binary message came back as text"
    assert echoed == payload
    assert rt.fake.session(first).binaries == [payload]


def test_text_frames_pass_unchanged(rt: RealtimeStack) -> None:
    first = rt.fake.count()
    texts = [
        '{"type":"x.echo",   "spacing" :  "kept", "u": "h\\u00e9llo"}',
        '{"type": "x.echo", "text": "héllo ✓ 𝄞 \u2028"}',
        "not json at all ✓",
        "x" * 200_000,
    ]
    with session_on(rt, "/v1/realtime?model=dep") as ws:
        for text in texts:
            ws.send(text)
            echoed = ws.recv(timeout=TIMEOUT)
            assert isinstance(echoed, str), "a text message came back as binary"
            assert echoed == text
    assert rt.fake.session(first).texts == texts


def test_upstream_close_code_and_reason_reach_the_client(rt: RealtimeStack) -> None:
    first = rt.fake.count()
    with session_on(rt, "/v1/realtime?model=dep") as ws:
        ws.send(json.dumps({"type": "test.close", "code": 4001, "reason": "bye"}))
        closed = closed_by_peer(ws)
        seen = time.monotonic()
    session = rt.fake.session(first)
    assert closed.rcvd is not None, "the client got no close frame"
    assert (closed.rcvd.code, closed.rcvd.reason) == (4001, "bye")
    assert session.closed_at is not None
    assert seen - session.closed_at < 1.0


def test_upstream_close_right_after_connect_reaches_the_client(rt: RealtimeStack) -> None:
    rt.fake.close_after_connect = (4003, "session limit")
    try:
        with session_on(rt, "/v1/realtime?model=dep") as ws:
            closed = closed_by_peer(ws)
    finally:
        rt.fake.close_after_connect = None
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (4003, "session limit")


def test_client_close_code_and_reason_reach_the_upstream(rt: RealtimeStack) -> None:
    first = rt.fake.count()
    with session_on(rt, "/v1/realtime?model=dep") as ws:
        ws.send("ping")
        assert ws.recv(timeout=TIMEOUT) == "ping"
        ws.close(4002, "client bye")
        closed_at = time.monotonic()
    session = rt.fake.session(first)
    assert ended(session), "the upstream session stayed open after the client closed"
    assert session.closed_by == "peer"
    assert (session.close_code, session.close_reason) == (4002, "client bye")
    assert session.closed_at is not None
    assert session.closed_at - closed_at < 1.0


def test_client_credentials_never_reach_the_upstream(rt: RealtimeStack) -> None:
    header_key, query_key = CLIENT_SECRETS
    first = rt.fake.count()
    path = f"/v1/realtime?model=dep&api-key={query_key}&x=1"
    with session_on(
        rt,
        path,
        additional_headers={"api-key": header_key, "Authorization": f"Bearer {header_key}"},
    ) as ws:
        ws.send("hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"
    session = rt.fake.session(first)
    bearer_of(rt.s, session)
    for secret in CLIENT_SECRETS:
        assert secret not in repr(session.headers)
        assert secret not in session.query
        assert secret not in session.path
    assert session.query == "model=dep&x=1"


def test_subprotocol_and_handshake_headers_are_relayed(rt: RealtimeStack) -> None:
    first = rt.fake.count()
    offered = ["realtime", "openai-beta.realtime-v1"]
    # The upstream's choice, not the first offered, must come back.
    rt.fake.choose_subprotocol = lambda protocols: protocols[-1] if protocols else None
    request_id = str(uuid.uuid4())
    try:
        with session_on(
            rt,
            "/v1/realtime?model=dep",
            subprotocols=offered,
            user_agent_header="realtime-test/1.0",
            additional_headers={
                "OpenAI-Beta": "realtime=v1",
                "x-ms-client-request-id": request_id,
            },
        ) as ws:
            assert ws.subprotocol == "openai-beta.realtime-v1"
    finally:
        rt.fake.choose_subprotocol = lambda protocols: protocols[0] if protocols else None
    session = rt.fake.session(first)
    assert session.subprotocols == offered
    assert session.header("openai-beta") == ["realtime=v1"]
    assert session.header("x-ms-client-request-id") == [request_id]
    assert session.header("user-agent") == ["realtime-test/1.0"]


def test_a_key_in_a_subprotocol_never_reaches_the_upstream(rt: RealtimeStack) -> None:
    """OpenAI's browser convention puts the key in a subprotocol: it is dropped like the
    api-key header."""
    header_key, _ = CLIENT_SECRETS
    first = rt.fake.count()
    offered = ["realtime", f"openai-insecure-api-key.{header_key}"]
    with session_on(rt, "/v1/realtime?model=dep", subprotocols=offered) as ws:
        assert ws.subprotocol == "realtime"
    session = rt.fake.session(first)
    assert session.subprotocols == ["realtime"]
    assert header_key not in repr(session.headers)


def test_no_subprotocol_offered_none_returned(rt: RealtimeStack) -> None:
    first = rt.fake.count()
    with session_on(rt, "/v1/realtime?model=dep") as ws:
        assert ws.subprotocol is None
    assert rt.fake.session(first).subprotocols == []


def test_a_session_without_a_request_id_gets_one_generated(rt: RealtimeStack) -> None:
    """As for HTTP requests: one id ties the proxy's access line to Azure's records."""
    first = rt.fake.count()
    with session_on(rt, "/v1/realtime?model=dep") as ws:
        ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "hi"
    [sent] = rt.fake.session(first).header("x-ms-client-request-id")
    assert uuid.UUID(sent).version == 4


def _denied(url: str, **kwargs: Any) -> Any:
    """The HTTP answer the proxy refused a handshake with."""
    with pytest.raises(InvalidStatus) as caught, ws_connect(url, **kwargs):
        pass
    return caught.value.response


@pytest.mark.parametrize("status", [401, 403, 404, 429])
def test_upstream_handshake_refusal_is_relayed(rt: RealtimeStack, status: int) -> None:
    first = rt.fake.count()
    rt.fake.refuse_status = status
    try:
        with (
            pytest.raises(InvalidStatus) as caught,
            ws_connect(rt.ws("/v1/realtime?model=dep")),
        ):
            pass
    finally:
        rt.fake.refuse_status = None
    response = caught.value.response
    assert response.status_code == status
    body = json.loads(response.body or b"")
    assert isinstance(body, dict)
    assert rt.fake.session(first).status == status


@pytest.mark.parametrize("status", [429, 503])
def test_a_throttled_handshake_is_denied_with_when_to_retry(rt: RealtimeStack, status: int) -> None:
    """The upstream's status and its retry headers reach the client, as on an HTTP request."""
    first = rt.fake.count()
    rt.fake.refuse_status = status
    rt.fake.refusal_headers = [
        ("Retry-After", "7"),
        ("retry-after-ms", "7000"),
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "7s"),
        ("x-fake-unrelated", "not relayed"),
    ]
    try:
        denied = _denied(rt.ws("/v1/realtime?model=dep"))
    finally:
        rt.fake.refuse_status = None
        rt.fake.refusal_headers = None
    assert rt.fake.session(first).status == status
    assert denied.status_code == status
    assert denied.headers["retry-after"] == "7"
    assert denied.headers["retry-after-ms"] == "7000"
    assert denied.headers["x-ratelimit-remaining-requests"] == "0"
    assert denied.headers["x-ratelimit-reset-requests"] == "7s"
    assert "x-fake-unrelated" not in denied.headers
    assert json.loads(denied.body)["error"]["code"] == "upstream_refused"
    # A single upstream is never held back by its cooldown: the next session opens.
    with session_on(rt, "/v1/realtime?model=dep") as ws:
        ws.send("after")
        assert ws.recv(timeout=TIMEOUT) == "after"


def test_a_failing_handshake_other_than_503_is_a_502_without_retry_headers(
    rt: RealtimeStack,
) -> None:
    rt.fake.refuse_status = 500
    rt.fake.refusal_headers = [("Retry-After", "7")]
    try:
        denied = _denied(rt.ws("/v1/realtime?model=dep"))
    finally:
        rt.fake.refuse_status = None
        rt.fake.refusal_headers = None
    assert denied.status_code == 502
    assert "retry-after" not in denied.headers


@pytest.mark.parametrize(
    ("path", "upstream_path", "upstream_query"),
    [
        ("/v1/realtime?model=dep", "/openai/v1/realtime", "model=dep"),
        ("/openai/v1/realtime?model=dep", "/openai/v1/realtime", "model=dep"),
        (
            "/openai/realtime?api-version=2025-04-01-preview&deployment=d",
            "/openai/realtime",
            "api-version=2025-04-01-preview&deployment=d",
        ),
        (
            "/api/projects/p1/openai/v1/realtime?model=dep",
            "/api/projects/p1/openai/v1/realtime",
            "model=dep",
        ),
    ],
)
def test_routes(rt: RealtimeStack, path: str, upstream_path: str, upstream_query: str) -> None:
    first = rt.fake.count()
    with session_on(rt, path) as ws:
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=TIMEOUT) == b"\x00\x01"
    session = rt.fake.session(first)
    assert (session.path, session.query) == (upstream_path, upstream_query)
    assert session.token_serial is not None
    assert rt.s.issuer.verify(session.token or "", (COGNITIVE, AI)) is None


# -- policy: default rules, inbound keys, browser origins -------------------------------------


def test_default_policy_inbound_keys_and_origins() -> None:
    stack = start(FOUNDRY_PROXY_API_KEYS=KEY)
    del stack.s.env["FOUNDRY_PROXY_POLICY"]  # the default policy, not the test stack's open one
    with running(stack) as rt:
        # No key: refused at the handshake, nothing upstream.
        with pytest.raises(InvalidStatus) as caught, ws_connect(rt.ws("/v1/realtime?model=dep")):
            pass
        assert caught.value.response.status_code == 401
        wrong = {"api-key": "X" * len(KEY)}
        with (
            pytest.raises(InvalidStatus) as caught,
            ws_connect(rt.ws("/v1/realtime?model=dep"), additional_headers=wrong),
        ):
            pass
        assert caught.value.response.status_code == 401
        assert rt.fake.count() == 0, "an unauthenticated handshake reached the upstream"
        # The same 401 as an HTTP request gets, challenge included.
        denied = _denied(rt.ws("/v1/realtime?model=dep"))
        http = httpx2.get(rt.s.url + "/v1/realtime?model=dep")
        assert http.status_code == denied.status_code == 401
        assert json.loads(denied.body) == http.json()
        assert http.json()["error"]["message"].startswith("foundry-proxy requires an inbound key")
        assert denied.headers["www-authenticate"] == 'Bearer realm="foundry-proxy"'
        # The policy's answers, with their hints: 404 naming the operation meant, 405 with Allow.
        keyed = {"additional_headers": {"api-key": KEY}}
        denied = _denied(rt.ws("/v1/realtim?model=dep"), **keyed)
        assert denied.status_code == 404
        assert "did you mean GET /v1/realtime?" in json.loads(denied.body)["error"]["message"]
        denied = _denied(rt.ws("/v1/chat/completions"), **keyed)
        assert denied.status_code == 405
        assert denied.headers["allow"] == "POST"
        assert json.loads(denied.body)["error"]["code"] == "method_not_allowed"
        assert rt.fake.count() == 0, "a refused handshake reached the upstream"
        # A browser page: refused even with the key.
        with (
            pytest.raises(InvalidStatus) as caught,
            ws_connect(
                rt.ws("/v1/realtime?model=dep"),
                additional_headers={"api-key": KEY},
                origin="https://evil.example",
            ),
        ):
            pass
        assert caught.value.response.status_code == 403
        assert rt.fake.count() == 0, "a browser handshake reached the upstream"
        # The key as the SDK sends it, and as AzureOpenAI sends it; both default routes.
        from openai import OpenAI

        client = OpenAI(base_url=rt.s.url + "/v1", api_key=KEY, max_retries=0)
        rt.s.clients.append(client)
        with sdk_connect(client) as connection:
            watchdog = threading.Timer(10, connection.close)
            watchdog.start()
            try:
                assert connection.recv().type == "session.created"
            finally:
                watchdog.cancel()
        dated = "/openai/realtime?api-version=2025-04-01-preview&deployment=d"
        with session_on(rt, dated, additional_headers={"api-key": KEY}) as ws:
            ws.send("hi")
            assert ws.recv(timeout=TIMEOUT) == "hi"
        assert rt.fake.count() == 2
        for session in rt.fake.sessions:
            bearer_of(rt.s, session)
            assert KEY not in repr(session.headers)
            assert KEY not in session.query


def test_a_handshake_over_the_concurrency_limit_gets_the_503_a_request_gets() -> None:
    stack = start(
        FOUNDRY_PROXY_MAX_CONCURRENCY="1",
        FOUNDRY_PROXY_POOL_SIZE="1",
        FOUNDRY_PROXY_QUEUE_TIMEOUT="0.3",
    )
    with running(stack) as rt, session_on(rt, "/v1/realtime?model=dep"):
        denied = _denied(rt.ws("/v1/realtime?model=dep"))
        http = httpx2.post(rt.s.url + "/v1/chat/completions", json={"model": "x"}, timeout=10)
        assert http.status_code == denied.status_code == 503
        assert http.headers["retry-after"] == denied.headers["retry-after"] == "1"
        error = json.loads(denied.body)["error"]
        assert error == http.json()["error"]
        assert error["code"] == "upstream_pool_exhausted"
        assert "FOUNDRY_PROXY_MAX_CONCURRENCY" in error["message"]


# -- (c) token rollover -----------------------------------------------------------------------


def test_session_outlives_its_token_and_new_sessions_get_the_current_one() -> None:
    stack = start()
    stack.s.entra.token_lifetime = 3
    with running(stack) as rt:
        with session_on(rt, "/v1/realtime?model=dep") as ws:
            first = rt.fake.session(0)
            bearer_of(rt.s, first)
            deadline = time.monotonic() + 5
            n = 0
            while time.monotonic() < deadline:
                text = json.dumps({"type": "x.echo", "n": n})
                ws.send(text)
                assert ws.recv(timeout=TIMEOUT) == text
                n += 1
                time.sleep(0.05)
            assert rt.s.issuer.verify(first.token or "", (COGNITIVE,)) == "expired"
            assert first.ended is None, "the session ended when its token expired"
        with session_on(rt, "/v1/realtime?model=dep") as ws:
            ws.send("after")
            assert ws.recv(timeout=TIMEOUT) == "after"
        second = rt.fake.session(1)
        bearer_of(rt.s, second)  # valid when the handshake was made
        assert second.token_serial is not None
        assert first.token_serial is not None
        assert second.token_serial > first.token_serial
        print(
            f"\nrealtime rollover: {n} messages over 5 s on token #{first.token_serial}; "
            f"new session on token #{second.token_serial}"
        )


# -- (d) message size limit -------------------------------------------------------------------

LIMIT = 65536


@pytest.fixture(scope="module")
def limited() -> Iterator[RealtimeStack]:
    with running(start(FOUNDRY_PROXY_WS_MAX_MESSAGE_BYTES=str(LIMIT))) as stack:
        yield stack


def test_message_at_the_limit_from_the_client_is_relayed(limited: RealtimeStack) -> None:
    rt = limited
    first = rt.fake.count()
    at_limit = os.urandom(LIMIT)
    # Uncompressed: with permessage-deflate the limit applies to the compressed frame, which
    # for random bytes is a little bigger than the message.
    with session_on(rt, "/v1/realtime?model=dep", compression=None) as ws:
        ws.send(at_limit)
        session = rt.fake.session(first)
        assert wait_until(lambda: session.received, TIMEOUT), "never reached the upstream"
    assert session.binaries == [at_limit]


def test_message_at_the_limit_from_the_upstream_is_relayed(limited: RealtimeStack) -> None:
    rt = limited
    with session_on(rt, "/v1/realtime?model=dep", compression=None) as ws:
        ws.send(json.dumps({"type": "test.burst", "count": 1, "size": LIMIT}))
        message = ws.recv(timeout=TIMEOUT)
    assert isinstance(message, bytes)
    assert len(message) == LIMIT


def test_message_above_the_limit_from_the_client_closes_both_sides_with_1009(
    limited: RealtimeStack,
) -> None:
    rt = limited
    first = rt.fake.count()
    with session_on(rt, "/v1/realtime?model=dep", compression=None) as ws:
        ws.send(os.urandom(LIMIT + 1))
        closed = closed_by_peer(ws)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1009
    session = rt.fake.session(first)
    assert ended(session, 2), "the upstream stayed open after the client's message was refused"
    assert session.binaries == [], "the oversized message reached the upstream"


def test_message_above_the_limit_from_the_upstream_closes_both_sides_with_1009(
    limited: RealtimeStack,
) -> None:
    rt = limited
    first = rt.fake.count()
    with session_on(rt, "/v1/realtime?model=dep", compression=None) as ws:
        ws.send(json.dumps({"type": "test.burst", "count": 1, "size": LIMIT + 1}))
        closed = closed_by_peer(ws)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1009
    session = rt.fake.session(first)
    assert ended(session, 2), "the upstream stayed open after its message was refused"


# -- (e) backpressure -------------------------------------------------------------------------


def test_slow_client_does_not_grow_the_proxy(rt: RealtimeStack) -> None:
    assert rt.s.proxy is not None
    pid = rt.s.proxy.proc.pid
    count, size = 50, 1 << 20
    first = rt.fake.count()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kb(pid))
            time.sleep(0.02)

    # max_queue=1: the client's own reader thread stops reading after one message, so the
    # relay's TCP send to it stalls (unless the relay buffers).
    with session_on(rt, "/v1/realtime?model=dep", max_queue=1, compression=None) as ws:
        baseline = rss_kb(pid)
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            ws.send(json.dumps({"type": "test.burst", "count": count, "size": size}))
            time.sleep(3)
            session = rt.fake.session(first)
            sent_while_stalled = session.sent - 1  # minus session.created
            received = []
            for _ in range(count):
                message = ws.recv(timeout=10)
                assert isinstance(message, bytes)
                received.append(message)
        finally:
            stop.set()
            sampler.join(5)
    assert [len(m) for m in received] == [size] * count
    assert [int.from_bytes(m[:4], "big") for m in received] == list(range(count))
    growth_mib = (peak[0] - baseline) / 1024
    print(
        f"\nrealtime backpressure: proxy RSS {baseline / 1024:.1f} MiB -> peak "
        f"{peak[0] / 1024:.1f} MiB (+{growth_mib:.1f} MiB); upstream had sent "
        f"{sent_while_stalled} of {count} x 1 MiB while the client read nothing"
    )
    assert growth_mib < 64, "the relay buffered a slow client's messages in memory"


# -- (f) added latency ------------------------------------------------------------------------


def _round_trips(ws: ClientConnection, n: int) -> list[float]:
    times = []
    for i in range(n):
        text = json.dumps({"type": "x.echo", "i": i, "pad": "p" * 64})
        t0 = time.perf_counter()
        ws.send(text)
        echoed = ws.recv(timeout=TIMEOUT)
        times.append(time.perf_counter() - t0)
        assert echoed == text
    return times


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def test_added_latency_per_message(rt: RealtimeStack) -> None:
    token = rt.s.issuer.issue(tenant=TENANT, client_id=CLIENT_ID, audience=COGNITIVE, lifetime=600)
    n = 200
    with ws_connect(
        rt.direct("/openai/v1/realtime?model=dep"),
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
    ) as ws:
        assert recv_json(ws)["type"] == "session.created"
        _round_trips(ws, 20)
        direct = _round_trips(ws, n)
    with session_on(rt, "/v1/realtime?model=dep", compression=None) as ws:
        _round_trips(ws, 20)
        proxied = _round_trips(ws, n)
    ms = 1000
    d50, d99 = _pct(direct, 50) * ms, _pct(direct, 99) * ms
    p50, p99 = _pct(proxied, 50) * ms, _pct(proxied, 99) * ms
    print(
        f"\nrealtime round trip, {n} messages: direct p50 {d50:.3f} ms p99 {d99:.3f} ms; "
        f"via proxy p50 {p50:.3f} ms p99 {p99:.3f} ms; added p50 {p50 - d50:.3f} ms "
        f"p99 {p99 - d99:.3f} ms (mean {statistics.mean(proxied) * ms:.3f} ms)"
    )
    assert p50 < 50


def test_each_session_gets_an_access_line_and_counts_in_metrics(rt: RealtimeStack) -> None:
    with session_on(rt, "/v1/realtime?model=dep") as ws:
        ws.send("one")
        assert ws.recv(timeout=TIMEOUT) == "one"
        ws.send(b"\x00two")
        assert ws.recv(timeout=TIMEOUT) == b"\x00two"
        ws.close(4005, "done here")
    assert rt.s.proxy is not None
    proxy = rt.s.proxy

    def session_lines() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in proxy.log.splitlines() if line.startswith('{"time"')]
        return [line for line in lines if line.get("close_code") == 4005]

    assert wait_until(session_lines, 5)
    [line] = session_lines()
    assert line["route"] == "realtime"
    assert line["status"] == 101
    assert line["frames_in"] == 2
    assert line["frames_out"] == 3  # session.created and the two echoes
    assert line["bytes_in"] == len("one") + len(b"\x00two")
    metrics = httpx2.get(rt.s.url + "/metrics").text
    assert 'foundry_proxy_requests_total{method="GET",route="realtime",status="1xx"' in metrics
