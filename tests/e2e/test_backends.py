"""Several fake Foundry resources behind one proxy: failover, cooldowns, weights, deployment
names, the circuit breaker and where the token goes (docs/backends.md).

The proxy runs as a process against two or three FakeResources on loopback, driven by the real
openai SDK (with its own retries off, so every retry seen is the proxy's) and httpx2.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx2
import openai
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e.realtime_pair import realtime_pair
from tests.e2e.stack import Stack, clean_environment, openai_client, run_proxy
from tests.fakes.resources import FakeResource, RefusingOrigin
from tests.support.backends_toml import backends_toml
from tests.support.chat import CHAT, CHAT_PATH
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "hello"}]


@contextmanager
def pool(
    names: tuple[str, ...], toml: str | None = None, tmp: Path | None = None, **env: str
) -> Iterator[tuple[Stack, list[FakeResource]]]:
    """A proxy in front of fake resources named ``names``, in priority order by
    FOUNDRY_PROXY_UPSTREAM, or by the backends file ``toml`` ({name} replaced by its URL)."""
    stack = Stack(**env)
    resources: list[FakeResource] = []
    try:
        resources = [FakeResource(stack.issuer, n).start() for n in names]
        if toml is None:
            stack.env["FOUNDRY_PROXY_UPSTREAM"] = ",".join(r.url for r in resources)
        else:
            assert tmp is not None
            path = tmp / "backends.toml"
            path.write_text(toml.format(**{r.name: r.url for r in resources}))
            del stack.env["FOUNDRY_PROXY_UPSTREAM"]
            stack.env["FOUNDRY_PROXY_BACKENDS_FILE"] = str(path)
        stack.start_proxy()
        yield stack, resources
    finally:
        log = stack.close()
        for r in resources:
            r.stop()
        assert not stack.leaks(log), "a secret or token reached the proxy's log"


def chat(client: openai.OpenAI, **extra: object) -> tuple[str, openai.types.chat.ChatCompletion]:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, **extra
    )  # type: ignore[call-overload]
    return raw.headers["x-fake-resource"], raw.parse()


def access_lines(stack: Stack) -> list[dict[str, object]]:
    assert stack.proxy is not None
    return [
        json.loads(line)
        for line in stack.proxy.lines
        if line.startswith('{"time"') and '"route"' in line
    ]


def metric(stack: Stack, name: str) -> dict[str, float]:
    text = httpx2.get(stack.url + "/metrics").text
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith(name)
    }


def test_primary_429_goes_to_the_secondary_until_its_cooldown_ends() -> None:
    with pool(("primary", "secondary")) as (stack, (primary, secondary)):
        client = openai_client(stack)
        primary.throttle("30")
        assert chat(client)[0] == "secondary"
        answered_at = time.monotonic()
        answered = [chat(client)[0] for _ in range(4)]
        assert answered == ["secondary"] * 4
        # One request met the 429; the next four never went to the primary.
        assert len(primary.entries("/chat/completions")) == 1
        assert len(secondary.entries("/chat/completions")) == 5
        throttled = primary.entries("/chat/completions")[0].first_byte
        assert throttled is not None
        # From the primary's 429 to the client holding the secondary's answer (docs/backends.md).
        print(f"failover latency: {(answered_at - throttled) * 1000:.1f} ms")
        assert access_lines(stack)[-1]["backend"] == "backend2"
        failovers = metric(stack, "foundry_proxy_backend_failovers_total")
        assert failovers['foundry_proxy_backend_failovers_total{backend="backend1"}'] == 1
        states = metric(stack, "foundry_proxy_backend_state")
        assert states['foundry_proxy_backend_state{backend="backend1",state="cooling_down"}'] == 1
        # Ready while the secondary can serve.
        assert httpx2.get(stack.url + "/readyz").status_code == 200


def test_cooldown_from_retry_after_ms_ends_and_the_primary_is_used_again() -> None:
    with pool(("primary", "secondary")) as (stack, (primary, _)):
        client = openai_client(stack)
        primary.throttle("1500", header=b"retry-after-ms")
        assert chat(client)[0] == "secondary"
        primary.status = None
        assert chat(client)[0] == "secondary"
        time.sleep(2.0)  # the 1.5 s asked for, with a margin
        assert chat(client)[0] == "primary"
        assert len(primary.entries("/chat/completions")) == 2


def test_refused_connections_fail_over_within_the_connect_timeout() -> None:
    refusing = RefusingOrigin()
    stack = Stack(FOUNDRY_PROXY_CONNECT_TIMEOUT="5")
    secondary = FakeResource(stack.issuer, "secondary").start()
    try:
        stack.env["FOUNDRY_PROXY_UPSTREAM"] = f"{refusing.url},{secondary.url}"
        stack.start_proxy()
        client = openai_client(stack)
        started = time.monotonic()
        assert chat(client)[0] == "secondary"
        assert time.monotonic() - started < 5
    finally:
        stack.close()
        secondary.stop()
        refusing.close()


def test_a_stream_broken_after_its_first_byte_is_not_retried() -> None:
    with pool(("primary", "secondary")) as (stack, (primary, secondary)):
        client = openai_client(stack)
        primary.break_stream = True
        received: list[str] = []
        with pytest.raises((openai.APIError, httpx2.HTTPError)):  # noqa: PT012
            for event in client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True
            ):
                received.extend(c.delta.content or "" for c in event.choices)
        assert received == ["from primary"]
        assert secondary.entries() == []


def test_a_body_over_the_replay_limit_is_not_retried() -> None:
    with pool(("primary", "secondary"), FOUNDRY_PROXY_REPLAY_BODY_LIMIT="1024") as (
        stack,
        (primary, secondary),
    ):
        primary.throttle("30")
        large = json.dumps(CHAT | {"messages": [{"role": "user", "content": "x" * 8192}]})

        def pieces() -> Iterator[bytes]:
            # In parts a moment apart, so the proxy has more than the limit before the end.
            for start in range(0, len(large), 2048):
                yield large[start : start + 2048].encode()
                time.sleep(0.05)

        with httpx2.Client(timeout=10) as client:
            r = client.post(stack.url + CHAT_PATH, content=pieces())
            # Streamed straight through, it cannot be sent twice: the primary's 429 as it is.
            assert r.status_code == 429
            assert r.headers["x-fake-resource"] == "primary"
            assert secondary.entries() == []
            # The primary now cools down: the next request goes to the secondary at once.
            r = client.post(stack.url + CHAT_PATH, json=CHAT)
            assert r.headers["x-fake-resource"] == "secondary"
        assert len(primary.entries()) == 1


# "{a}" and "{b}" become the resources' URLs in pool().
WEIGHTS = backends_toml(
    {"name": "a", "origin": "{a}", "priority": 1, "weight": 1},
    {"name": "b", "origin": "{b}", "priority": 1, "weight": 1},
)


def test_weights_split_load_within_ten_percent_over_1000_requests(tmp_path: Path) -> None:
    with pool(("a", "b"), WEIGHTS, tmp_path) as (stack, (a, b)):

        def send(count: int) -> list[int]:
            with httpx2.Client(timeout=10) as client:
                return [
                    client.post(stack.url + CHAT_PATH, json=CHAT).status_code for _ in range(count)
                ]

        with ThreadPoolExecutor(4) as workers:
            statuses = [s for done in workers.map(send, [250] * 4) for s in done]
        assert statuses == [200] * 1000
        counts = (len(a.entries("/chat/")), len(b.entries("/chat/")))
        assert sum(counts) == 1000
        assert all(abs(n - 500) <= 50 for n in counts), counts


MAPPED = backends_toml(
    {"name": "a", "origin": "{a}", "priority": 1, "deployments": {"gpt-4o": "gpt-4o-a"}},
    {"name": "b", "origin": "{b}", "priority": 2, "deployments": {"gpt-4o": "gpt-4o-b"}},
)


def test_deployment_names_are_mapped_per_backend_on_both_route_families(tmp_path: Path) -> None:
    with pool(("a", "b"), MAPPED, tmp_path) as (stack, (a, b)):
        v1 = openai_client(stack)
        azure = openai.AzureOpenAI(
            azure_endpoint=stack.url, api_version="2024-10-21", api_key="unused", max_retries=0
        )
        stack.clients.append(azure)
        assert chat(v1)[0] == "a"
        azure.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        assert a.models_seen()[0] == "gpt-4o-a"
        assert a.entries("/deployments/")[0].raw_path == (
            "/openai/deployments/gpt-4o-a/chat/completions"
        )
        # After a failover, the next backend gets its own name for the same deployment.
        a.throttle("30")
        assert chat(v1)[0] == "b"
        azure.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        assert b.models_seen()[0] == "gpt-4o-b"
        assert b.entries("/deployments/")[0].raw_path == (
            "/openai/deployments/gpt-4o-b/chat/completions"
        )
        # A name with no mapping goes as the client wrote it.
        v1.chat.completions.create(model="other", messages=MESSAGES)  # type: ignore[arg-type]
        assert b.models_seen()[-1] == "other"


def test_all_backends_429_gives_429_with_the_smallest_retry_after() -> None:
    with pool(("a", "b", "c")) as (stack, (a, b, c)):
        client = openai_client(stack)
        a.throttle("30")
        b.throttle("12")
        c.throttle("20")
        # The last backend's own 429 reaches the client as it is.
        with pytest.raises(openai.RateLimitError) as first:
            chat(client)
        assert first.value.response.headers["x-fake-resource"] == "c"
        # Now every one cools down: the proxy's own 429, with the soonest of them.
        with pytest.raises(openai.RateLimitError) as info:
            chat(client)
        assert 10 <= int(info.value.response.headers["retry-after"]) <= 12
        body = info.value.response.json()
        assert body["error"]["code"] == "all_backends_cooling_down"
        assert "127.0.0.1" not in info.value.response.text
        assert [len(r.entries()) for r in (a, b, c)] == [1, 1, 1]
        ready = httpx2.get(stack.url + "/readyz")
        assert ready.status_code == 503
        assert set(ready.json()["backends"]) == {"backend1", "backend2", "backend3"}


BREAKER = backends_toml(
    {"name": "primary", "origin": "{primary}", "priority": 1},
    {"name": "secondary", "origin": "{secondary}", "priority": 2},
    breaker_failures=2,
    breaker_seconds=2,
)


def test_the_circuit_breaker_opens_and_recovers(tmp_path: Path) -> None:
    with pool(("primary", "secondary"), BREAKER, tmp_path) as (stack, (primary, _)):
        client = openai_client(stack)
        # 503s asking for a 0.1 s pause: the cooldown alone would not keep the primary out.
        primary.status = (503, [(b"retry-after-ms", b"100")])
        assert chat(client)[0] == "secondary"
        time.sleep(0.3)
        assert chat(client)[0] == "secondary"
        assert len(primary.entries()) == 2
        state = 'foundry_proxy_backend_state{backend="primary",state="open"}'
        assert metric(stack, "foundry_proxy_backend_state")[state] == 1
        # Open: for its 2 s, nothing goes to the primary.
        for _ in range(5):
            assert chat(client)[0] == "secondary"
            time.sleep(0.1)
        assert len(primary.entries()) == 2
        # Healthy again; once the circuit's time is up one request probes it and closes it.
        primary.status = None
        assert wait_until(lambda: chat(client)[0] == "primary", 10, every=0.3)
        assert chat(client)[0] == "primary"
        state = 'foundry_proxy_backend_state{backend="primary",state="closed"}'
        assert metric(stack, "foundry_proxy_backend_state")[state] == 1


def test_the_token_reaches_only_configured_origins() -> None:
    with pool(("a", "b")) as (stack, (a, b)):
        outsider = FakeResource(stack.issuer, "outsider").start()
        try:
            host = outsider.url.removeprefix("http://")
            with httpx2.Client(timeout=10) as client:
                for headers in (
                    {"x-forwarded-host": host},
                    {"forwarded": f"host={host}"},
                    {"x-ms-original-url": outsider.url + "/openai/v1/chat/completions"},
                    {"x-original-url": outsider.url + "/openai/v1/chat/completions"},
                ):
                    r = client.post(stack.url + CHAT_PATH, json=CHAT, headers=headers)
                    assert r.status_code == 200
                a.throttle("30")
                b.throttle("30")
                client.post(stack.url + CHAT_PATH, json=CHAT)
                r = client.post(stack.url + CHAT_PATH, json=CHAT)
                assert r.status_code == 429
                assert host not in r.text
            assert outsider.entries() == []
            for resource in (a, b):
                for entry in resource.entries():
                    assert entry.auth == "ok"
        finally:
            outsider.stop()


def test_realtime_fails_over_at_the_handshake_only() -> None:
    with realtime_pair() as (primary, secondary, url):
        primary.refuse_status = 503
        with connect(url, open_timeout=5, close_timeout=2) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
            assert (primary.count(), secondary.count()) == (1, 1)
            # Once open, the session is the secondary's: when it ends, nothing is reopened.
            primary.refuse_status = None
            ws.send(json.dumps({"type": "test.close", "code": 4001, "reason": "bye"}))
            with pytest.raises(ConnectionClosed) as closed:  # noqa: PT012
                while True:
                    ws.recv(timeout=5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4001
        assert (primary.count(), secondary.count()) == (1, 1)


def test_check_calls_every_backend(tmp_path: Path) -> None:
    stack = Stack()
    good = FakeResource(stack.issuer, "good").start()
    refusing = RefusingOrigin()
    try:
        keys = ("AZURE_AUTHORITY_HOST", "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")
        values = {k: stack.env[k] for k in keys}
        env_file = tmp_path / "check.env"

        def check(upstream: str) -> tuple[int, dict[str, object]]:
            lines = values | {"FOUNDRY_PROXY_UPSTREAM": upstream}
            env_file.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
            args = ["check", "--env-file", str(env_file), "--json"]
            result = run_proxy(args, clean_environment())
            assert not stack.leaks(result.stdout + result.stderr)
            return result.returncode, json.loads(result.stdout)

        code, report = check(f"{good.url},{stack.foundry_server.url}")
        assert code == 0, report
        assert len(good.entries("/models")) == 1
        assert len(stack.foundry.entries("/models")) == 1
        code, report = check(f"{good.url},{refusing.url}")
        assert code == 1
        steps = report["steps"]
        assert isinstance(steps, list)
        failed = [s["summary"] for s in steps if s["status"] == "fail"]
        assert len(failed) == 1
        assert failed[0].startswith("backend backend2:")
    finally:
        stack.close()
        good.stop()
        refusing.close()
