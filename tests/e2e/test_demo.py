"""`foundry-proxy demo` as a newcomer runs it: a subprocess, the openai SDK, then Ctrl-C."""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import anthropic
import httpx2
import openai
import pytest

from tests.e2e.stack import clean_environment, run_proxy
from tests.support.processes import Child
from tests.support.rawsock import request
from tests.support.readiness import wait_for_status

pytestmark = pytest.mark.e2e


PROXY_URL = r"^\s+proxy\s+(http://127\.0\.0\.1:\d+)"

_C = TypeVar("_C", bound=openai.OpenAI)


class Demo:
    """``foundry-proxy demo --port 0`` in a process group of its own, ready to serve."""

    def __init__(self, *args: str) -> None:
        # SDK clients made for this demo, closed when it stops: one left to the garbage
        # collector keeps its pooled sockets open.
        self.clients: list[openai.OpenAI] = []
        self.child = Child(
            [sys.executable, "-m", "proxy", "demo", "--port", "0", *args],
            env=clean_environment(),
            merge=False,
        )
        try:
            found = self.child.wait_for_line(PROXY_URL, 60)
            assert found, "demo printed no proxy URL:\n" + self.child.stdout + self.child.stderr
            self.url = found.group(1)
            assert wait_for_status(self.url + "/readyz", 200, 30), "demo never became ready"
        except BaseException:
            self.child.end()
            raise

    @property
    def out(self) -> list[str]:
        return self.child.out

    @property
    def err(self) -> list[str]:
        return self.child.err

    def keep(self, client: _C) -> _C:
        """``client``, to be closed when the demo stops."""
        self.clients.append(client)
        return client

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, float]:
        """Stop with ``sig`` as a user would (the clients kept for it closed first); the exit
        code and how long it took."""
        try:
            for client in self.clients:
                client.close()
        finally:
            started = time.monotonic()
            code = self.child.stop(sig, timeout=15)
        return code, time.monotonic() - started


@pytest.fixture
def demo() -> Iterator[Demo]:
    d = Demo("--token-delay", "0.1")
    try:
        yield d
    finally:
        d.stop()


def test_demo_streams_a_chat_completion_and_stops_on_ctrl_c(demo: Demo) -> None:
    arrivals, pieces = [], []
    with openai.OpenAI(base_url=demo.url + "/v1", api_key="unused", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello demo"}], stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
                pieces.append(chunk.choices[0].delta.content)
    text = "".join(pieces)
    assert (
        text == "Hello from the foundry-proxy emulator (emulated-gpt-4o-mini). You said: Hello demo"
    )
    # Streamed token by token (0.1 s apart), not delivered in one piece at the end.
    assert arrivals[-1] - arrivals[0] > 0.1 * (len(arrivals) - 1) * 0.7
    with httpx2.stream(
        "POST",
        demo.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "stream": True, "messages": []},
    ) as r:
        assert r.headers["x-foundry-proxy-emulator"] == "true"
    banner = "".join(demo.out)
    assert "EMULATED" in banner
    assert f'OpenAI(base_url="{demo.url}/v1"' in banner
    assert f"curl -N {demo.url}/v1/chat/completions" in banner
    # The Python snippet needs the SDK, which the proxy does not install.
    assert "pip install openai" in banner
    assert banner.index("curl -N") < banner.index("pip install openai")
    # Claude: the Anthropic SDK's base URL, and a snippet naming the Claude deployment.
    assert f"Anthropic base URL {demo.url}/anthropic" in banner
    assert f'Anthropic(base_url="{demo.url}/anthropic", api_key="unused")' in banner
    assert 'model="claude-sonnet-4-5"' in banner
    assert "pip install anthropic" in banner
    code, took = demo.stop(signal.SIGINT)
    assert code == 0
    assert took < 10
    # One server the user runs, one pair of lifecycle lines (the emulators' are not repeated).
    log = "".join(demo.err)
    assert log.count("Started server process") == 1, log
    assert log.count("Finished server process") == 1, log


def test_demo_runs_the_production_listener(demo: Demo) -> None:
    """The demo's proxy is the guarded listener of listener.py, as in production: a request
    target that is not in origin form is refused by the listener itself (plain uvicorn would
    hand it to the app)."""
    port = int(demo.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request("GET http://example.com/v1/models HTTP/1.1", host="example.com"))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400 "), answer


def test_demo_serves_every_emulated_route(demo: Demo) -> None:
    client = demo.keep(openai.OpenAI(base_url=demo.url + "/v1", api_key="unused", max_retries=0))
    assert next(m.id for m in client.models.list()).startswith("emulated-")
    assert (
        len(client.embeddings.create(model="text-embedding-3-small", input="hi").data[0].embedding)
        == 16
    )
    response = client.responses.create(model="gpt-4o-mini", input="Hi there")
    assert response.output_text.endswith("You said: Hi there")
    events = [e.type for e in client.responses.create(model="gpt-4o-mini", input="Hi", stream=True)]
    assert events[0] == "response.created"
    assert events[-1] == "response.completed"
    assert "response.output_text.delta" in events
    azure = demo.keep(
        openai.AzureOpenAI(
            azure_endpoint=demo.url, api_version="2024-10-21", api_key="x", max_retries=0
        )
    )
    reply = azure.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    assert reply.model == "emulated-gpt-4o-mini"
    r = httpx2.post(
        demo.url + "/models/chat/completions?api-version=2024-05-01-preview",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 200
    assert r.headers["x-foundry-proxy-emulator"] == "true"
    # Not an operation the default policy forwards: the proxy answers, the emulator never sees it.
    missing = httpx2.get(demo.url + "/openai/v1/vector_stores")
    assert missing.status_code == 403
    assert missing.json()["error"]["code"] == "operation_not_allowed"
    assert "x-foundry-proxy-emulator" not in missing.headers
    audio = client.audio.transcriptions.create(
        model="whisper", file=("a.wav", b"RIFF" + bytes(1000))
    )
    assert audio.text.startswith("Emulated transcription of a.wav: 1004 bytes")


def test_demo_fault_knobs() -> None:
    d = Demo("--rate-limit-every", "2", "--token-delay", "0")
    try:
        with openai.OpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0) as client:
            client.models.list()
            with pytest.raises(openai.RateLimitError) as info:
                client.models.list()
        assert info.value.response.headers["retry-after"] == "2"
    finally:
        assert d.stop(signal.SIGTERM)[0] == 0


def test_demo_refreshes_short_tokens() -> None:
    """With 3 s tokens, 5 s of calls succeed throughout: the emulator checks expiry."""
    d = Demo("--token-lifetime", "3", "--token-delay", "0")
    try:
        with openai.OpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0) as client:
            deadline = time.monotonic() + 5
            calls = 0
            while time.monotonic() < deadline:
                client.models.list()  # raises on any 401
                calls += 1
                time.sleep(0.1)
        assert calls > 20
    finally:
        d.stop()
    assert "not refreshed" not in "".join(d.err)


def test_demo_refuses_bad_options() -> None:
    result = run_proxy(
        [
            "demo",
            "--port",
            "70000",
            "--rate-limit-every",
            "-1",
            "--retry-after",
            "600",
            "--deployments",
            "gpt-4o=chat,embed=vectors",
        ],
        clean_environment(),
    )
    assert result.returncode == 2
    assert "--port must be between 0 and 65535" in result.stderr
    assert "--rate-limit-every must not be negative" in result.stderr
    assert "--retry-after must be more than 0 and at most 120 seconds" in result.stderr
    assert "--deployments: 'embed=vectors' is not NAME=KIND" in result.stderr


def test_demo_answers_mistakes_as_azure_does() -> None:
    """The demo's own deployments (--deployments): the banner's snippets use them, other names
    get Azure's 404 DeploymentNotFound, with the OpenAI SDK and the Anthropic SDK alike."""
    d = Demo("--deployments", "prod-chat=chat,prod-embed=embeddings,prod-claude=claude")
    try:
        banner = "".join(d.out)
        assert "deployments        prod-chat=chat,prod-embed=embeddings,prod-claude=claude\n" in (
            banner
        )
        assert 'model="prod-chat"' in banner
        assert 'model="prod-claude"' in banner
        with openai.OpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0) as client:
            assert [m.id for m in client.models.list()] == [
                "emulated-prod-chat",
                "emulated-prod-embed",
                "emulated-prod-claude",
            ]
            hello: list[Any] = [{"role": "user", "content": "Hi"}]
            assert client.chat.completions.create(model="prod-chat", messages=hello).choices
            with pytest.raises(openai.NotFoundError) as missing:
                client.chat.completions.create(model="gpt-4o-mini", messages=hello)
            assert missing.value.code == "DeploymentNotFound"
            with pytest.raises(openai.NotFoundError):
                client.models.retrieve("emulated-gpt-4o-mini")
            with pytest.raises(openai.BadRequestError) as wrong:
                client.embeddings.create(model="prod-chat", input="x")
            assert wrong.value.code == "OperationNotSupported"
        with anthropic.Anthropic(
            base_url=d.url + "/anthropic", api_key="unused", max_retries=0
        ) as claude:
            answer = claude.messages.create(model="prod-claude", max_tokens=4, messages=hello)
            assert answer.model == "emulated-prod-claude"
            with pytest.raises(anthropic.NotFoundError):
                claude.messages.create(model="claude-sonnet-4-5", max_tokens=4, messages=hello)
    finally:
        assert d.stop()[0] == 0


def test_demo_429_with_a_chosen_retry_after() -> None:
    d = Demo("--rate-limit-every", "1", "--retry-after", "0.5", "--token-delay", "0")
    try:
        with anthropic.Anthropic(
            base_url=d.url + "/anthropic", api_key="unused", max_retries=0
        ) as claude:
            with pytest.raises(anthropic.RateLimitError) as limited:
                claude.messages.create(
                    model="claude-sonnet-4-5",
                    max_tokens=4,
                    messages=[{"role": "user", "content": "Hi"}],
                )
            headers = limited.value.response.headers
            assert (headers["retry-after"], headers["retry-after-ms"]) == ("1", "500")
            assert limited.value.response.headers["x-foundry-proxy-emulator"] == "true"
    finally:
        d.stop()
