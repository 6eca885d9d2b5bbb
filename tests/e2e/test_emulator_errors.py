"""The emulator's answers to mistakes, as Azure gives them (docs/azure.md, "The emulator's error
answers"), seen through the proxy by the real OpenAI SDK: its exception types, codes and bodies,
and the 429's headers honoured by its retry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import httpx2
import openai
import pytest

from proxy.emulator.content_filter import FILTER_ANSWER, FILTER_PROMPT
from proxy.emulator.deployments import Deployments
from tests.e2e.stack import Stack, serving

pytestmark = pytest.mark.e2e

HELLO: list[Any] = [{"role": "user", "content": "Hello"}]
NOT_FOUND_MESSAGE = "The API deployment for this resource does not exist."


@pytest.fixture(scope="module")
def azure() -> Iterator[Stack]:
    """The proxy in front of the emulator holding its default deployments."""
    s = Stack()
    s.foundry.deployments = Deployments()
    yield from serving(s)


@pytest.fixture
def faults(azure: Stack) -> Iterator[Stack]:
    """The same stack; whatever faults a test switches on are off again after it."""
    try:
        yield azure
    finally:
        azure.foundry.faults.rate_limit_every = 0
        azure.foundry.faults.fail_every = 0


_C = TypeVar("_C", bound=openai.OpenAI)


class Clients:
    """The SDK clients a test makes, all closed when it ends."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.made: list[openai.OpenAI] = []

    def v1(self, retries: int = 0) -> openai.OpenAI:
        url = self.stack.url + "/v1"
        return self.keep(openai.OpenAI(base_url=url, api_key="unused", max_retries=retries))

    def dated(self, version: str = "2024-10-21") -> openai.AzureOpenAI:
        client = openai.AzureOpenAI(
            azure_endpoint=self.stack.url, api_version=version, api_key="unused", max_retries=0
        )
        return self.keep(client)

    def keep(self, client: _C) -> _C:
        self.made.append(client)
        return client


@pytest.fixture
def sdk(azure: Stack) -> Iterator[Clients]:
    clients = Clients(azure)
    try:
        yield clients
    finally:
        for client in clients.made:
            client.close()


def test_the_default_deployments_answer(azure: Stack, sdk: Clients) -> None:
    assert sdk.v1().chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices
    # The models list names them "emulated-...": those names are served too.
    ids = [m.id for m in sdk.v1().models.list()]
    assert "emulated-gpt-4o-mini" in ids
    answer = sdk.dated().chat.completions.create(model=ids[0], messages=HELLO)
    assert answer.model == ids[0]
    vectors = sdk.v1().embeddings.create(model="text-embedding-3-small", input="x")
    assert vectors.model == "emulated-text-embedding-3-small"


def test_an_unknown_deployment_is_404_deployment_not_found(azure: Stack, sdk: Clients) -> None:
    with pytest.raises(openai.NotFoundError) as on_v1:
        sdk.v1().chat.completions.create(model="gpt-4o-typo", messages=HELLO)
    assert on_v1.value.code == "DeploymentNotFound"
    assert on_v1.value.type == "invalid_request_error"  # the v1 routes add OpenAI's type
    assert NOT_FOUND_MESSAGE in str(on_v1.value)
    with pytest.raises(openai.NotFoundError) as on_dated:
        sdk.dated().chat.completions.create(model="gpt-4o-typo", messages=HELLO)
    assert on_dated.value.code == "DeploymentNotFound"
    assert on_dated.value.body == {
        "code": "DeploymentNotFound",
        "message": NOT_FOUND_MESSAGE + " If you created the deployment within the last 5 "
        "minutes, please wait a moment and try again.",
    }
    for call in (
        lambda: sdk.v1().embeddings.create(model="embedding-typo", input="x"),
        lambda: sdk.dated().embeddings.create(model="embedding-typo", input="x"),
        lambda: sdk.v1().responses.create(model="gpt-4o-typo", input="Hi"),
        lambda: sdk.v1().audio.transcriptions.create(
            model="whisper-typo", file=("a.wav", b"RIFF" + bytes(100))
        ),
    ):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert missing.value.code == "DeploymentNotFound"


def test_an_operation_the_deployment_cannot_do_is_400_operation_not_supported(
    azure: Stack, sdk: Clients
) -> None:
    with pytest.raises(openai.BadRequestError) as chat_on_embeddings:
        sdk.v1().chat.completions.create(model="text-embedding-3-small", messages=HELLO)
    assert chat_on_embeddings.value.code == "OperationNotSupported"
    assert "The chatCompletion operation does not work with the specified model, emulated-" in (
        str(chat_on_embeddings.value)
    )
    with pytest.raises(openai.BadRequestError) as embed_on_chat:
        sdk.dated().embeddings.create(model="gpt-4o-mini", input="x")
    assert embed_on_chat.value.code == "OperationNotSupported"


def test_api_version_missing_is_404_and_unknown_is_400(azure: Stack, sdk: Clients) -> None:
    no_version = sdk.keep(
        openai.OpenAI(
            base_url=azure.url + "/openai/deployments/gpt-4o-mini", api_key="x", max_retries=0
        )
    )
    with pytest.raises(openai.NotFoundError) as missing:
        no_version.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert missing.value.body == {"code": "404", "message": "Resource not found"}
    for version in ("2019-01-01", "2024-13-40", "yesterday"):
        with pytest.raises(openai.BadRequestError) as unknown:
            sdk.dated(version).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        assert unknown.value.body == {"code": "BadRequest", "message": "API version not supported"}
    for version in ("2024-10-21", "2025-04-01-preview", "preview"):
        assert sdk.dated(version).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    # The v1 routes take no api-version.
    assert sdk.v1().chat.completions.create(model="gpt-4o-mini", messages=HELLO)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"model": "gpt-4o-mini", "messages": [', "application/json"),
        (b"model=gpt-4o-mini&messages=hello", "application/x-www-form-urlencoded"),
        (b"\xff\xfe not utf-8", "application/json"),
        (b'["model", "gpt-4o-mini"]', "application/json"),
        (b"", "application/json"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_400(
    azure: Stack, body: bytes, content_type: str
) -> None:
    for path in (
        "/v1/chat/completions",
        "/openai/deployments/gpt-4o-mini/embeddings?api-version=2024-10-21",
    ):
        r = httpx2.post(azure.url + path, content=body, headers={"content-type": content_type})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] is None
        assert error["message"].startswith("We could not parse the JSON body of your request.")


def test_missing_required_fields_are_400(azure: Stack, sdk: Clients) -> None:
    client = sdk.v1()
    cases = [
        ("/chat/completions", {"model": "gpt-4o-mini"}, "'messages' is a required property"),
        ("/chat/completions", {"messages": HELLO}, "'model' is a required property"),
        ("/embeddings", {"model": "text-embedding-3-small"}, "'input' is a required property"),
        ("/embeddings", {"input": "x"}, "'model' is a required property"),
        ("/responses", {"model": "gpt-4o-mini"}, "'input' is a required property"),
    ]
    for path, body, message in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.post(path, body=body, cast_to=object)
        assert bad.value.body == {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }, path
    with pytest.raises(openai.BadRequestError) as no_file:
        client.post("/audio/transcriptions", body={"model": "whisper"}, cast_to=object)
    assert no_file.value.param == "file"


def test_a_filtered_prompt_is_400_content_filter(azure: Stack, sdk: Clients) -> None:
    prompt: list[Any] = [{"role": "user", "content": f"Tell me {FILTER_PROMPT} please"}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as filtered:
            sdk.v1().chat.completions.create(model="gpt-4o-mini", messages=prompt, stream=stream)
        error = filtered.value
        assert error.code == "content_filter"
        assert error.param == "prompt"
        assert isinstance(error.body, dict)
        inner = error.body["innererror"]
        assert inner["code"] == "ResponsibleAIPolicyViolation"
        assert inner["content_filter_result"]["violence"] == {
            "filtered": True,
            "severity": "medium",
        }
        assert inner["content_filter_result"]["hate"] == {"filtered": False, "severity": "safe"}
        assert "content management policy" in error.body["message"]


def test_a_filtered_answer_stops_with_finish_reason_content_filter(
    azure: Stack, sdk: Clients
) -> None:
    prompt: list[Any] = [{"role": "user", "content": f"Say something {FILTER_ANSWER}"}]
    client = sdk.v1()
    whole = client.chat.completions.create(model="gpt-4o-mini", messages=prompt)
    choice = whole.choices[0]
    assert choice.finish_reason == "content_filter"
    assert choice.model_extra is not None
    assert choice.model_extra["content_filter_results"]["violence"]["filtered"] is True
    full = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices[0]
    assert full.finish_reason == "stop"
    assert choice.message.content
    assert whole.usage is not None
    assert whole.usage.completion_tokens == len(choice.message.content.split())
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=prompt, stream=True))
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "content_filter"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content


def test_429_carries_azures_headers_and_the_sdk_waits_as_told(faults: Stack, sdk: Clients) -> None:
    faults.foundry.faults.rate_limit_every = 1
    faults.foundry.faults.retry_after = 1.5
    before = len(faults.foundry.entries("/chat/completions"))
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.v1(retries=1).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    headers = limited.value.response.headers
    assert headers["retry-after"] == "2"
    assert headers["retry-after-ms"] == "1500"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert limited.value.code == "429"
    assert "Please retry after 2 seconds" in str(limited.value)
    tries = faults.foundry.entries("/chat/completions")[before:]
    assert len(tries) == 2
    # The retry came after retry-after-ms (1.5 s), not after the SDK's own shorter backoff.
    assert tries[1].started - tries[0].started >= 1.4


def test_500_is_the_sdks_internal_server_error(faults: Stack, sdk: Clients) -> None:
    faults.foundry.faults.fail_every = 1
    with pytest.raises(openai.InternalServerError) as failed:
        sdk.v1().embeddings.create(model="text-embedding-3-small", input="x")
    assert failed.value.code == "InternalServerError"


def test_models_info(azure: Stack) -> None:
    url = azure.url + "/models/info"
    info = httpx2.get(url, params={"api-version": "2024-05-01-preview"})
    assert info.status_code == 200
    assert info.json() == {
        "model_name": "emulated-gpt-4o-mini",
        "model_type": "chat-completions",
        "model_provider_name": "foundry-proxy-emulator",
    }
    embeddings = httpx2.get(
        url, params={"api-version": "2024-05-01-preview", "model": "text-embedding-3-small"}
    )
    assert embeddings.json()["model_type"] == "embeddings"
    unknown = httpx2.get(url, params={"api-version": "2024-05-01-preview", "model": "nope"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "DeploymentNotFound"
    assert httpx2.get(url).status_code == 404  # api-version is required on /models
