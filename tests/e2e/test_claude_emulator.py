"""The emulator's Claude route answering mistakes in Anthropic's shape, as Foundry does
(docs/azure.md, "The emulator's error answers"), seen through the proxy by the real anthropic
SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from proxy.emulator.deployments import Deployments
from tests.e2e.stack import Stack, serving

pytestmark = pytest.mark.e2e

MESSAGES: list[Any] = [{"role": "user", "content": "Hello Claude"}]


@pytest.fixture(scope="module")
def foundry() -> Iterator[Stack]:
    """The proxy in front of the emulator holding its default deployments."""
    s = Stack()
    s.foundry.deployments = Deployments()
    yield from serving(s)


@pytest.fixture
def client(foundry: Stack) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=foundry.url + "/anthropic", api_key="unused", max_retries=0
    ) as made:
        yield made
    foundry.foundry.faults.rate_limit_every = 0
    foundry.foundry.faults.fail_every = 0


def _error(exc: anthropic.APIStatusError) -> dict[str, Any]:
    """The ``error`` object of Anthropic's envelope, checking the envelope on the way."""
    body = exc.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    error = body["error"]
    assert isinstance(error, dict)
    return error


def test_the_claude_deployment_answers(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MESSAGES)
    assert message.model == "emulated-claude-sonnet-4-5"
    # Its emulated model name is served too, as on the OpenAI routes.
    assert client.messages.count_tokens(model="emulated-claude-sonnet-4-5", messages=MESSAGES)


def test_an_unknown_deployment_is_the_sdks_not_found_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-typo", max_tokens=8, messages=MESSAGES)
    error = _error(missing.value)
    assert error["type"] == "not_found_error"
    assert error["message"].startswith("The API deployment for this resource does not exist.")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-typo", messages=MESSAGES)
    with (
        pytest.raises(anthropic.NotFoundError),
        client.messages.stream(model="claude-typo", max_tokens=8, messages=MESSAGES) as stream,
    ):
        stream.get_final_message()


def test_an_openai_deployment_is_not_claude(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as wrong:
        client.messages.create(model="gpt-4o-mini", max_tokens=8, messages=MESSAGES)
    error = _error(wrong.value)
    assert error["type"] == "invalid_request_error"
    assert "emulated-gpt-4o-mini" in error["message"]


@pytest.mark.parametrize(
    ("body", "wanted"),
    [
        ({"model": "claude-sonnet-4-5", "messages": MESSAGES}, "max_tokens"),
        ({"model": "claude-sonnet-4-5", "max_tokens": 0, "messages": MESSAGES}, "max_tokens"),
        ({"model": "claude-sonnet-4-5", "max_tokens": 8}, "messages"),
        ({"max_tokens": 8, "messages": MESSAGES}, "model"),
    ],
)
def test_missing_fields_are_the_sdks_bad_request_error(
    client: anthropic.Anthropic, body: dict[str, Any], wanted: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.post("/v1/messages", body=body, cast_to=object)
    error = _error(bad.value)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{wanted}: ")


@pytest.mark.parametrize("body", [b'{"model": "claude-sonnet-4-5", "max_tokens":', b"hello", b""])
def test_a_body_that_is_not_json_is_400_invalid_request(foundry: Stack, body: bytes) -> None:
    r = httpx2.post(
        foundry.url + "/anthropic/v1/messages",
        content=body,
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 400
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_429_is_the_sdks_rate_limit_error_and_its_retry_waits(
    foundry: Stack, client: anthropic.Anthropic
) -> None:
    foundry.foundry.faults.rate_limit_every = 1
    foundry.foundry.faults.retry_after = 1.5
    before = len(foundry.foundry.entries("/anthropic/v1/messages"))
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.with_options(max_retries=1).messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=MESSAGES
        )
    assert _error(limited.value)["type"] == "rate_limit_error"
    headers = limited.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("2", "1500")
    tries = foundry.foundry.entries("/anthropic/v1/messages")[before:]
    assert len(tries) == 2
    # The SDK waited as the answer asked (retry-after-ms), longer than its own backoff.
    assert tries[1].started - tries[0].started >= 1.4


def test_500_is_the_sdks_internal_server_error(foundry: Stack, client: anthropic.Anthropic) -> None:
    foundry.foundry.faults.fail_every = 1
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=MESSAGES)
    assert _error(failed.value)["type"] == "api_error"
