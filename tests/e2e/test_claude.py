"""Claude through the proxy: the real anthropic SDK, base_url=<proxy>/anthropic, against the fake
Foundry (the emulator's Messages API with a journal), the default policy and the demo."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import anthropic
import httpx2
import pytest

from proxy.credentials.claims import decode_claims
from tests.e2e.stack import Stack, serving
from tests.e2e.test_demo import Demo
from tests.fakes.foundry import Entry
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e

MESSAGES: list[Any] = [{"role": "user", "content": "Hello Claude through the proxy"}]


#: Makes the SDK client as its users write it: the proxy's /anthropic as base URL, any api_key.
Claude = Callable[..., anthropic.Anthropic]


@pytest.fixture
def claude() -> Iterator[Claude]:
    """``claude(url, **kwargs)`` for a test; every client it made is closed when the test ends,
    whatever its outcome (a client left to the garbage collector keeps its sockets open)."""
    with ExitStack() as made:

        def make(url: str, **kwargs: Any) -> anthropic.Anthropic:
            client = anthropic.Anthropic(
                base_url=url + "/anthropic", api_key="any-local-value", max_retries=0, **kwargs
            )
            return made.enter_context(client)

        yield make


def _series(text: str, name: str, **labels: str) -> float:
    """The one Prometheus sample called ``name`` whose labels include ``labels``; 0 if none."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    found = [
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(w in line for w in wanted)
    ]
    assert len(found) <= 1, found
    return found[0] if found else 0.0


def _access_lines(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith('{"time":')]


def _proxy_said(err: anthropic.APIStatusError, kind: str, code: str) -> str:
    """A proxy's own error as the SDK saw it: Anthropic's shape (docs.claude.com/en/api/errors),
    with the proxy's code beside the type; its message, which the SDK put in str(err)."""
    body = err.body
    assert isinstance(body, dict), body
    assert body["type"] == "error"
    assert set(body) == {"type", "error"}
    assert body["error"]["type"] == err.type == kind
    assert body["error"]["code"] == code
    message = body["error"]["message"]
    assert message in str(err)
    return str(message)


def _sent_upstream(entry: Entry) -> None:
    """The request as Foundry saw it: one bearer token for https://ai.azure.com, none of the
    client's credentials, Anthropic's headers as the SDK sent them."""
    auth = entry.header("authorization")
    assert len(auth) == 1, entry.headers
    claims = decode_claims(auth[0].removeprefix("Bearer "))
    assert claims is not None
    assert claims["aud"] == "https://ai.azure.com"
    assert entry.auth == "ok"
    assert entry.header("x-api-key") == []
    assert entry.header("api-key") == []
    assert "any-local-value" not in repr(entry.headers)
    with anthropic.Anthropic(api_key="x") as sdk:
        version = sdk.default_headers["anthropic-version"]
    assert entry.header("anthropic-version") == [version]


def test_messages(stack: Stack, claude: Claude) -> None:
    client = claude(stack.url)
    message = client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=256,
        messages=MESSAGES,
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31,context-1m-2025-08-07"},
    )
    assert message.model == "emulated-claude-sonnet-4-5"
    assert message.content[0].type == "text"
    assert message.content[0].text.endswith("You said: Hello Claude through the proxy")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 5
    assert message.usage.output_tokens == len(message.content[0].text.split(" "))
    entry = stack.foundry.entries("/anthropic/v1/messages")[-1]
    assert entry.raw_path == "/anthropic/v1/messages"
    _sent_upstream(entry)
    assert entry.header("anthropic-beta") == ["prompt-caching-2024-07-31,context-1m-2025-08-07"]


def test_max_tokens_cuts_the_answer(stack: Stack, claude: Claude) -> None:
    message = claude(stack.url).messages.create(
        model="claude-sonnet-4-5", max_tokens=1, messages=MESSAGES
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 1


def test_stream_arrives_event_by_event_while_upstream_is_still_writing(
    stack: Stack, claude: Claude
) -> None:
    client = claude(stack.url)
    delay = 0.5
    arrivals: list[float] = []
    kinds: list[str] = []
    texts: list[str] = []
    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=MESSAGES,
        extra_headers={"x-fake-chunks": "3", "x-fake-delay": str(delay)},
    ) as stream:
        for event in stream:
            arrivals.append(time.monotonic())
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                texts.append(event.delta.text)
        final = stream.get_final_message()
    entry = stack.foundry.entries("/anthropic/v1/messages")[-1]
    # The client has message_stop a moment before the upstream has closed the stream.
    assert wait_until(lambda: entry.completed, 5)
    assert entry.ended is not None
    _sent_upstream(entry)
    assert texts == ["tok0 ", "tok1 ", "tok2"]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "message_delta" in kinds
    assert final.usage.output_tokens == 3
    # The first event reached the client while the upstream still had seconds of writing to
    # do, and every event arrived soon after the upstream wrote it (nothing buffered). The SDK
    # yields its own text events beside the wire's, so arrivals are matched by time, not index.
    assert arrivals[0] < entry.ended - 3 * delay
    for sent, data in zip(entry.events, entry.written, strict=True):
        if not data.startswith(b"event: ping"):  # the SDK keeps pings to itself
            # The fake notes an event's time once its write returned: the client may be first.
            assert any(-0.1 < got - sent < 0.4 for got in arrivals), f"held back: {data!r}"


def test_count_tokens_matches_the_messages_usage(stack: Stack, claude: Claude) -> None:
    client = claude(stack.url)
    system = "You are terse."
    counted = client.messages.count_tokens(
        model="claude-sonnet-4-5", system=system, messages=MESSAGES
    )
    used = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=8, system=system, messages=MESSAGES
    )
    assert counted.input_tokens == used.usage.input_tokens == 8
    entry = stack.foundry.entries("/anthropic/v1/messages/count_tokens")[-1]
    _sent_upstream(entry)


def test_a_bad_request_reaches_the_sdk_as_its_error(stack: Stack, claude: Claude) -> None:
    client = claude(stack.url)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=0, messages=MESSAGES)
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_usage_is_counted_in_metrics_and_the_access_log(fresh_stack: Stack, claude: Claude) -> None:
    s = fresh_stack
    proxy = s.start_proxy()
    client = claude(s.url)
    plain = client.messages.create(model="claude-usage-json", max_tokens=64, messages=MESSAGES)
    with client.messages.stream(
        model="claude-usage-stream",
        max_tokens=1000,
        messages=MESSAGES,
        extra_headers={"x-fake-chunks": "300", "x-fake-delay": "0"},
    ) as stream:
        streamed = stream.get_final_message()
    client.messages.count_tokens(model="claude-usage-count", messages=MESSAGES)
    assert wait_until(lambda: len(_access_lines(proxy.log)) >= 3, 5)
    metrics = httpx2.get(s.url + "/metrics").text
    tokens = "foundry_proxy_model_tokens_total"
    for model, usage in (("json", plain.usage), ("stream", streamed.usage)):
        name = f"emulated-claude-usage-{model}"
        assert _series(metrics, tokens, model=name, kind="prompt") == usage.input_tokens
        assert _series(metrics, tokens, model=name, kind="completion") == usage.output_tokens
        assert (
            _series(metrics, tokens, model=name, kind="total")
            == usage.input_tokens + usage.output_tokens
        )
    # The stream's message_start (input) was far from its tail: 300 deltas came after it.
    assert streamed.usage.output_tokens == 300
    # Counting tokens is not using them.
    assert "emulated-claude-usage-count" not in metrics
    route = 'route="anthropic"'
    assert _series(metrics, "foundry_proxy_requests_total", streamed="true") == 1
    assert route in metrics
    lines = {line["path"] + str(line["streamed"]): line for line in _access_lines(proxy.log)}
    json_line = lines["/anthropic/v1/messagesFalse"]
    assert json_line["route"] == "anthropic"
    assert json_line["model"] == "emulated-claude-usage-json"
    assert json_line["tokens"] == plain.usage.input_tokens + plain.usage.output_tokens
    stream_line = lines["/anthropic/v1/messagesTrue"]
    assert stream_line["model"] == "emulated-claude-usage-stream"
    assert stream_line["tokens"] == streamed.usage.input_tokens + 300
    count_line = lines["/anthropic/v1/messages/count_tokensFalse"]
    assert count_line["status"] == 200
    assert count_line.get("tokens") is None
    # The model a count_tokens answer does not name is the request's.
    assert count_line["model"] == "claude-usage-count"


def test_a_rejected_token_is_refreshed_and_the_claude_call_replayed(
    fresh_stack: Stack, claude: Claude
) -> None:
    s = fresh_stack
    s.start_proxy()
    client = claude(s.url)
    client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MESSAGES)
    s.issuer.revoke_all()
    client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MESSAGES)
    last_two = s.foundry.entries("/anthropic/v1/messages")[-2:]
    assert [e.auth for e in last_two] == ["revoked", "ok"]
    assert last_two[0].token_serial != last_two[1].token_serial
    assert last_two[0].body_sha256 == last_two[1].body_sha256


def test_tokens_roll_over_under_a_long_claude_stream(fresh_stack: Stack, claude: Claude) -> None:
    """A 3 s token under a stream of ~5 s and calls around it: the stream is not cut when its
    token expires, and the calls after it go with a fresh token."""
    s = fresh_stack
    s.entra.token_lifetime = 3
    s.start_proxy()
    client = claude(s.url)
    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=MESSAGES,
        extra_headers={"x-fake-chunks": "25", "x-fake-delay": "0.2"},
    ) as stream:
        for _ in stream:
            # Calls beside the stream while it runs, as a Claude Code session makes them.
            if len(s.foundry.entries("/anthropic/v1/messages")) < 6:
                client.messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES)
        final = stream.get_final_message()
    assert final.usage.output_tokens == 25
    after = client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MESSAGES)
    assert after.stop_reason == "max_tokens"
    entries = s.foundry.entries("/anthropic/")
    assert [e.auth for e in entries if e.auth != "ok"] == []
    assert entries[0].completed
    assert len({e.token_serial for e in entries}) >= 2, "the token was not rolled over"


@pytest.fixture(scope="module")
def default_policy() -> Iterator[Stack]:
    s = Stack()
    del s.env["FOUNDRY_PROXY_POLICY"]  # the default policy, not the test stack's open one
    yield from serving(s)


def test_the_default_policy_serves_messages_and_count_tokens(
    default_policy: Stack, claude: Claude
) -> None:
    client = claude(default_policy.url)
    assert client.messages.create(model="claude-x", max_tokens=4, messages=MESSAGES).content
    assert client.messages.count_tokens(model="claude-x", messages=MESSAGES).input_tokens == 5
    # A typo'd operation: a 404 naming the one meant, not the policy's 403.
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.post("/v1/message", cast_to=object, body={"model": "claude-x"})
    assert "did you mean POST /anthropic/v1/messages?" in str(missing.value)
    _proxy_said(missing.value, "not_found_error", "not_found")


def test_the_sdk_without_anthropic_in_its_base_url_is_told_what_to_use(
    default_policy: Stack,
) -> None:
    with (
        anthropic.Anthropic(base_url=default_policy.url, api_key="x", max_retries=0) as client,
        pytest.raises(anthropic.NotFoundError) as missing,
    ):
        client.messages.create(model="claude-x", max_tokens=4, messages=MESSAGES)
    assert f"base URL to {default_policy.url}/anthropic " in str(missing.value)


def test_the_demo_serves_claude(claude: Claude) -> None:
    demo = Demo("--token-delay", "0.05")
    try:
        client = claude(demo.url)
        message = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=256, messages=MESSAGES
        )
        assert message.model == "emulated-claude-sonnet-4-5"
        assert "You said: Hello Claude through the proxy" in message.content[0].text
        texts = []
        with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=256, messages=MESSAGES
        ) as stream:
            texts = list(stream.text_stream)
            final = stream.get_final_message()
        assert "".join(texts) == message.content[0].text
        assert final.usage.output_tokens == len(texts)
        counted = client.messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES)
        assert counted.input_tokens == message.usage.input_tokens
    finally:
        demo.stop()


def test_claude_code_gateway_settings_with_an_inbound_key(
    fresh_stack: Stack, claude: Claude
) -> None:
    """Claude Code's gateway settings (docs/claude.md) against a proxy that requires a key:
    ANTHROPIC_AUTH_TOKEN arrives as Authorization: Bearer, ANTHROPIC_API_KEY as x-api-key;
    both are checked and neither goes upstream. Its calls carry ?beta=true and anthropic-beta."""
    s = fresh_stack
    key = "local-inbound-key-for-claude-code"
    s.env["FOUNDRY_PROXY_API_KEYS"] = key
    s.start_proxy()
    base = s.url + "/anthropic"
    betas = "claude-code-20250219,interleaved-thinking-2025-05-14"
    with (
        anthropic.Anthropic(
            base_url=base, auth_token=key, api_key=None, max_retries=0
        ) as as_auth_token,
        anthropic.Anthropic(base_url=base, api_key=key, max_retries=0) as as_api_key,
    ):
        for client in (as_auth_token, as_api_key):
            answer = client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=8,
                messages=MESSAGES,
                extra_query={"beta": "true"},
                extra_headers={"anthropic-beta": betas},
            )
            assert answer.content
            entry = s.foundry.entries("/anthropic/v1/messages")[-1]
            _sent_upstream(entry)
            assert entry.query == "beta=true"
            assert entry.header("anthropic-beta") == [betas]
            assert key not in repr(entry.headers)
            assert client.messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        claude(s.url).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MESSAGES)
    said = _proxy_said(refused.value, "authentication_error", "invalid_api_key")
    assert said.startswith("foundry-proxy requires an inbound key")


def test_the_proxys_refusals_reach_the_sdk_as_its_errors(
    default_policy: Stack, claude: Claude
) -> None:
    """What the proxy itself refuses on /anthropic/ comes in Anthropic's error shape, so the SDK
    raises the exception a Claude caller handles, with the proxy's message."""
    client = claude(default_policy.url)
    before = len(default_policy.foundry.journal)
    with pytest.raises(anthropic.APIStatusError) as wrong_method:
        client.get("/v1/messages", cast_to=object)
    assert wrong_method.value.status_code == 405
    said = _proxy_said(wrong_method.value, "invalid_request_error", "method_not_allowed")
    assert said.startswith("GET is not allowed on /anthropic/v1/messages")
    assert wrong_method.value.response.headers["allow"] == "POST"
    with pytest.raises(anthropic.BadRequestError) as bad_path:
        client.post("/v1/%2e%2e/messages", cast_to=object, body={})
    said = _proxy_said(bad_path.value, "invalid_request_error", "invalid_request")
    assert "encoded slash, dot" in said
    page = claude(default_policy.url, default_headers={"Origin": "https://evil.example"})
    with pytest.raises(anthropic.PermissionDeniedError) as web_page:
        page.messages.create(model="claude-x", max_tokens=4, messages=MESSAGES)
    said = _proxy_said(web_page.value, "permission_error", "forbidden_origin")
    assert "requests from web pages are refused" in said
    assert len(default_policy.foundry.journal) == before, "a refused call reached the upstream"


def test_the_proxys_failures_reach_the_sdk_as_its_errors(
    fresh_stack: Stack, claude: Claude
) -> None:
    """413 (FOUNDRY_PROXY_MAX_BODY_BYTES) and an upstream that cannot be reached (502), in
    Anthropic's shape."""
    s = fresh_stack
    s.env["FOUNDRY_PROXY_MAX_BODY_BYTES"] = "2000"
    with socket.socket() as unused:  # a loopback port nothing listens on
        unused.bind(("127.0.0.1", 0))
        s.env["FOUNDRY_PROXY_UPSTREAM"] = f"http://127.0.0.1:{unused.getsockname()[1]}"
    s.start_proxy()
    client = claude(s.url)
    long = [{"role": "user", "content": "x" * 5000}]
    with pytest.raises(anthropic.ContentTooLargeError) as big:
        client.messages.create(model="claude-x", max_tokens=4, messages=long)
    said = _proxy_said(big.value, "request_too_large", "request_too_large")
    assert "FOUNDRY_PROXY_MAX_BODY_BYTES" in said
    with pytest.raises(anthropic.InternalServerError) as unreachable:
        client.messages.create(model="claude-x", max_tokens=4, messages=MESSAGES)
    assert unreachable.value.status_code == 502
    said = _proxy_said(unreachable.value, "api_error", "upstream_unreachable")
    assert said.startswith("could not connect to http://127.0.0.1:")


def test_no_token_reaches_the_sdk_as_overloaded(fresh_stack: Stack) -> None:
    """A 503 of the proxy's (Entra refuses the credential) is Anthropic's overloaded_error, the
    proxy's explanation in the message; x-should-retry: false stops the SDK's retries."""
    s = fresh_stack
    s.env["AZURE_CLIENT_SECRET"] = "not-the-secret-entra-knows"
    s.start_proxy(ready=False)
    with (
        anthropic.Anthropic(base_url=s.url + "/anthropic", api_key="x", max_retries=2) as client,
        pytest.raises(anthropic.ServiceUnavailableError) as unavailable,
    ):
        client.messages.create(model="claude-x", max_tokens=4, messages=MESSAGES)
    said = _proxy_said(unavailable.value, "overloaded_error", "token_unavailable")
    assert said.startswith("foundry-proxy has no Entra ID token")
    assert s.foundry.entries("/anthropic/") == []
