"""Unchanged OpenAI SDK clients against the running proxy (OpenAI with base_url, AzureOpenAI)."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from openai import AzureOpenAI

from proxy.emulator.deployments import DEFAULTS
from tests.e2e.stack import Stack, openai_client
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Say hello"}]


def test_chat_completion_via_v1_base_url(stack: Stack) -> None:
    client = openai_client(stack)
    reply = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert reply.choices[0].message.content == (
        "Hello from the foundry-proxy emulator (emulated-gpt-test). You said: Say hello"
    )
    entry = stack.foundry.entries("/chat/completions")[-1]
    assert entry.raw_path == "/openai/v1/chat/completions"
    assert entry.auth == "ok"
    # The SDK's dummy key never reaches the upstream; the proxy's token does, once.
    assert entry.header("authorization") == [
        "Bearer " + stack.issuer.token(entry.token_serial or 0)
    ]


def test_chat_completion_via_azure_openai_client(stack: Stack) -> None:
    client = AzureOpenAI(
        azure_endpoint=stack.url, api_version="2024-10-21", api_key="no-secret-here", max_retries=0
    )
    stack.clients.append(client)
    reply = client.chat.completions.create(model="my-deployment", messages=MESSAGES)
    assert reply.model == "emulated-my-deployment"
    assert reply.choices[0].message.content.endswith("You said: Say hello")
    entry = stack.foundry.entries("/deployments/")[-1]
    assert entry.raw_path == "/openai/deployments/my-deployment/chat/completions"
    assert entry.query == "api-version=2024-10-21"
    assert entry.header("api-key") == []
    assert entry.auth == "ok"


def test_stream_arrives_event_by_event_while_upstream_is_still_writing(stack: Stack) -> None:
    client = openai_client(stack)
    delay = 0.4
    stream = client.chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-chunks": "4", "x-fake-delay": str(delay)},
    )
    arrivals: list[float] = []
    texts: list[str] = []
    usage = None
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    entry = stack.foundry.entries("/chat/completions")[-1]
    # The fake notes its stream complete just after writing the last event, which the client
    # may read first: wait for the note instead of racing it.
    assert wait_until(lambda: entry.completed, 10)
    assert entry.ended is not None
    assert texts == ["tok0 ", "tok1 ", "tok2 ", "tok3"]
    assert usage is not None
    assert usage.completion_tokens == 4
    # The first event reached the client while the upstream still had seconds of writing to do,
    # and every event arrived soon after the upstream wrote it (nothing buffered).
    assert arrivals[0] < entry.ended - 3 * delay
    for sent, received in zip(entry.events, arrivals, strict=False):
        assert received - sent < 0.3, "an event was held back by the proxy"


def test_azure_client_streams_too(stack: Stack) -> None:
    client = AzureOpenAI(
        azure_endpoint=stack.url, api_version="2024-10-21", api_key="x", max_retries=0
    )
    stack.clients.append(client)
    stream = client.chat.completions.create(
        model="dep",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-fake-chunks": "3", "x-fake-delay": "0"},
    )
    texts = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert texts == ["tok0 ", "tok1 ", "tok2"]


def test_embeddings(stack: Stack) -> None:
    client = openai_client(stack)
    result = client.embeddings.create(model="embed-test", input=["one", "two"])
    again = client.embeddings.create(model="embed-test", input="two")
    assert [d.index for d in result.data] == [0, 1]
    # Deterministic vectors, carried base64-encoded (the SDK asks for that) through the proxy.
    assert result.data[1].embedding == pytest.approx(again.data[0].embedding, abs=1e-6)
    assert result.data[0].embedding != result.data[1].embedding
    assert sum(v * v for v in result.data[0].embedding) == pytest.approx(1.0, abs=1e-3)
    assert stack.foundry.entries("/embeddings")[-1].raw_path == "/openai/v1/embeddings"


def test_models_list(stack: Stack) -> None:
    client = openai_client(stack)
    assert [m.id for m in client.models.list()] == [d.model for d in DEFAULTS]
    assert stack.foundry.entries("/models")[-1].method == "GET"


@pytest.mark.parametrize("size", [512 * 1024, 3 * 1024 * 1024 + 7])
def test_multipart_audio_upload_is_byte_exact(stack: Stack, size: int) -> None:
    audio = os.urandom(size)
    client = openai_client(stack)
    result = client.audio.transcriptions.create(model="whisper", file=("speech.wav", audio))
    digest = hashlib.sha256(audio).hexdigest()
    assert result.text == f"Emulated transcription of speech.wav: {size} bytes, sha256 {digest}."
    entry = stack.foundry.entries("/audio/transcriptions")[-1]
    assert entry.raw_path == "/openai/v1/audio/transcriptions"
    assert entry.body_len > size


def test_azure_audio_upload_to_deployment_route(stack: Stack) -> None:
    audio = os.urandom(600 * 1024)
    client = AzureOpenAI(
        azure_endpoint=stack.url, api_version="2024-10-21", api_key="x", max_retries=0
    )
    stack.clients.append(client)
    result = client.audio.transcriptions.create(model="whisper-dep", file=("a.wav", audio))
    digest = hashlib.sha256(audio).hexdigest()
    assert result.text == f"Emulated transcription of a.wav: {len(audio)} bytes, sha256 {digest}."
    entry = stack.foundry.entries("/audio/transcriptions")[-1]
    assert entry.raw_path == "/openai/deployments/whisper-dep/audio/transcriptions"
