"""`foundry-proxy demo` as a newcomer runs it: a subprocess, the openai SDK, then Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx2
import openai
import pytest

from tests.e2e.stack import clean_environment

pytestmark = pytest.mark.e2e


class Demo:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "demo", "--port", "0", *args],
            env=clean_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.url = ""
        seen = threading.Event()

        def read_out() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.out.append(line)
                if m := re.match(r"\s+proxy\s+(http://127\.0\.0\.1:\d+)", line):
                    self.url = m.group(1)
                    seen.set()
            seen.set()

        def read_err() -> None:
            assert self.proc.stderr is not None
            self.err.extend(self.proc.stderr)

        self.readers = [threading.Thread(target=read_out), threading.Thread(target=read_err)]
        for t in self.readers:
            t.start()
        seen.wait(30)
        assert self.url, "demo printed no proxy URL:\n" + "".join(self.out + self.err)
        deadline = time.monotonic() + 15
        while httpx2.get(self.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "demo never became ready"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, float]:
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        for t in self.readers:
            t.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code, time.monotonic() - started


@pytest.fixture
def demo() -> Iterator[Demo]:
    d = Demo("--token-delay", "0.1")
    yield d
    d.stop()


def test_demo_streams_a_chat_completion_and_stops_on_ctrl_c(demo: Demo) -> None:
    client = openai.OpenAI(base_url=demo.url + "/v1", api_key="unused", max_retries=0)
    arrivals, pieces = [], []
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
        json={"model": "m", "stream": True, "messages": []},
    ) as r:
        assert r.headers["x-foundry-proxy-emulator"] == "true"
    banner = "".join(demo.out)
    assert "EMULATED" in banner
    assert f'OpenAI(base_url="{demo.url}/v1"' in banner
    assert f"curl -N {demo.url}/v1/chat/completions" in banner
    code, took = demo.stop(signal.SIGINT)
    assert code == 0
    assert took < 5


def test_demo_serves_every_emulated_route(demo: Demo) -> None:
    client = openai.OpenAI(base_url=demo.url + "/v1", api_key="unused", max_retries=0)
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
    azure = openai.AzureOpenAI(
        azure_endpoint=demo.url, api_version="2024-10-21", api_key="x", max_retries=0
    )
    reply = azure.chat.completions.create(
        model="my-dep", messages=[{"role": "user", "content": "Hi"}]
    )
    assert reply.model == "emulated-my-dep"
    r = httpx2.post(
        demo.url + "/models/chat/completions?api-version=2024-05-01-preview",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 200
    assert r.headers["x-foundry-proxy-emulator"] == "true"
    # Not an operation the default policy forwards: the proxy answers, the emulator never sees it.
    missing = httpx2.get(demo.url + "/openai/v1/nothing-here")
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
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0)
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
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0)
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
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--port", "70000", "--rate-limit-every", "-1"],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--port must be between 0 and 65535" in result.stderr
    assert "--rate-limit-every must not be negative" in result.stderr
