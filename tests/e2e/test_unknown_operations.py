"""Mistakes get a 404 that names what was meant; the policy's 403 is kept for real operations.

A typo'd path is not an operation anyone should allow, so it must not get the policy's "allow it
with FOUNDRY_PROXY_ALLOW=..." answer. Anthropic API calls (Claude) get an answer of their own.
The proxy runs with the default policy, driven by the openai SDK and by plain HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import openai
import pytest

from tests.e2e.stack import Stack, serving
from tests.support.chat import CHAT

pytestmark = pytest.mark.e2e

CLAUDE = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": CHAT["messages"]}


@pytest.fixture(scope="module")
def default_policy() -> Iterator[Stack]:
    s = Stack()
    del s.env["FOUNDRY_PROXY_POLICY"]  # the default policy, not the test stack's open one
    s.env["FOUNDRY_PROXY_ALLOW"] = "GET /openai/v1/brand_new"  # an operation newer than the list
    yield from serving(s)


@pytest.mark.parametrize(
    ("method", "path", "meant"),
    [
        ("POST", "/v1/chat/completion", "POST /v1/chat/completions"),
        ("POST", "/v1/Chat/Completions", "POST /v1/chat/completions"),
        ("POST", "/v1/embedding", "POST /v1/embeddings"),
        ("GET", "/v1/model", "GET /v1/models"),
        ("POST", "/openai/v1/respones", "POST /openai/v1/responses"),
        (
            "POST",
            "/openai/deployments/gpt-test/chat/completion?api-version=2024-10-21",
            "POST /openai/deployments/gpt-test/chat/completions",
        ),
        ("GET", "/v1/thread/t1/messages", "GET /v1/threads/t1/messages"),
        ("GET", "/api/projects/p1/deployment", "GET /api/projects/p1/deployments"),
        # No route family at all: a base URL without /v1.
        ("POST", "/chat/completions", "POST /v1/chat/completions"),
        ("GET", "/v2/models", "GET /v1/models"),
    ],
)
def test_a_typo_is_a_404_naming_the_operation_meant(
    default_policy: Stack, method: str, path: str, meant: str
) -> None:
    s = default_policy
    before = len(s.foundry.journal)
    reply = httpx2.request(method, s.url + path, json=CHAT if method == "POST" else None)
    assert reply.status_code == 404, reply.text
    error = reply.json()["error"]
    assert error["code"] == "not_found"
    assert error["type"] == "invalid_request_error"
    assert f"did you mean {meant}?" in error["message"]
    # Nothing invites the operator to open the policy for a typo.
    assert "FOUNDRY_PROXY_ALLOW=" not in error["message"]
    assert "x-foundry-proxy-error" not in reply.headers  # the code travels in the body only
    assert len(s.foundry.journal) == before, "a mistake reached the upstream"


def test_nothing_close_still_names_the_nearest_operation(default_policy: Stack) -> None:
    reply = httpx2.get(default_policy.url + "/v1/does/not/exist")
    assert reply.status_code == 404
    message = reply.json()["error"]["message"]
    assert message.startswith("GET /v1/does/not/exist is not an operation foundry-proxy knows")
    assert "the nearest known operation is GET /v1/" in message
    assert "did you mean" not in message


def test_the_openai_sdk_sees_not_found_with_the_hint(default_policy: Stack) -> None:
    """A base URL missing its /v1: the SDK raises NotFoundError and says what was meant."""
    with (
        openai.OpenAI(base_url=default_policy.url, api_key="unused", max_retries=0) as client,
        pytest.raises(openai.NotFoundError) as info,
    ):
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert "did you mean POST /v1/chat/completions?" in str(info.value)
    assert info.value.code == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/fine_tuning/jobs", 403),  # a real operation the default policy leaves out
        ("POST", "/v1/chat/completions/extra", 403),  # the shape of a stored-completion update
        ("GET", "/v1/threads/t1/messages", 403),  # Assistants' messages, not Anthropic's
        ("DELETE", "/v1/files/file-1", 405),
        ("GET", "/openai/v1/brand_new", 200),  # unknown to the list, allowed by the operator
        ("POST", "/openai/v1/brand_new", 405),
    ],
)
def test_known_or_allowed_operations_keep_the_policy_answer(
    default_policy: Stack, method: str, path: str, status: int
) -> None:
    s = default_policy
    before = len(s.foundry.journal)
    reply = httpx2.request(method, s.url + path, json=CHAT if method == "POST" else None)
    if status == 200:
        assert reply.headers.get("x-foundry-proxy-error") is None, reply.text
        assert len(s.foundry.journal) == before + 1
        return
    assert reply.status_code == status, reply.text
    code = {403: "operation_not_allowed", 405: "method_not_allowed"}[status]
    assert reply.json()["error"]["code"] == code
    assert len(s.foundry.journal) == before


@pytest.mark.parametrize(
    "path",
    [
        "/v1/messages",  # Anthropic(base_url=proxy), Claude Code's ANTHROPIC_BASE_URL=proxy
        "/v1/messages/count_tokens",
        "/messages",  # a base URL ending in /v1
        "/openai/v1/messages",  # where an earlier answer of the proxy pointed
    ],
)
def test_an_anthropic_call_outside_anthropic_is_told_the_base_url(
    default_policy: Stack, path: str
) -> None:
    s = default_policy
    before = len(s.foundry.journal)
    headers = {"x-api-key": "unused", "anthropic-version": "2023-06-01"}
    reply = httpx2.post(s.url + path + "?beta=true", json=CLAUDE, headers=headers)
    assert reply.status_code == 404, reply.text
    body = reply.json()
    # Anthropic's error shape, which its SDKs and Claude Code read.
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    message = body["error"]["message"]
    assert message.startswith(f"POST {path} is an Anthropic API call (Claude)")
    assert f"base URL to {s.url}/anthropic " in message  # the address the client used
    assert "FOUNDRY_PROXY_ALLOW" not in message
    assert body["error"]["code"] == "anthropic_base_url"
    assert "x-foundry-proxy-error" not in reply.headers  # the code travels in the body only
    assert len(s.foundry.journal) == before
