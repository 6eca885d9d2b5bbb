"""A whole test deployment on loopback: fake Entra, fake Foundry, and the real proxy process.

The proxy runs as ``python -m proxy`` in a subprocess, exactly as users start it, configured
only through its environment; its stderr is captured so tests can read (and scan) its logs.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import httpx2

from tests.fakes.entra import FakeEntra
from tests.fakes.foundry import FakeFoundry
from tests.fakes.serve import ServerThread
from tests.fakes.tokens import RecordingIssuer

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def wait_until(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def clean_environment() -> dict[str, str]:
    """The test runner's environment without anything that could configure the proxy."""
    drop = ("AZURE_", "FOUNDRY_PROXY_", "OPENAI_", "IDENTITY_", "MSI_")
    return {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(drop) and not k.lower().endswith("_proxy")
    }


class ProxyProcess:
    """``python -m proxy`` on a free loopback port."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--port", "0", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._port_seen = threading.Event()
        self.port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if not self.port and (m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)):
                self.port = int(m.group(1))
                self._port_seen.set()
        self._port_seen.set()

    def wait_listening(self, timeout: float = 20) -> ProxyProcess:
        if not self._port_seen.wait(timeout) or not self.port:
            self.stop()
            raise RuntimeError("proxy did not start:\n" + self.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx2.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx2.TransportError:
                pass
            time.sleep(0.02)
        raise RuntimeError("proxy never answered /healthz:\n" + self.log)

    def wait_ready(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx2.get(self.url + "/readyz", timeout=2).status_code == 200:
                return
            time.sleep(0.02)
        raise AssertionError("proxy never became ready:\n" + self.log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


class Stack:
    """Fakes plus proxy; ``env`` overrides are applied to the proxy's environment."""

    def __init__(self, **env: str) -> None:
        self.secret = f"CANARY-SECRET-{uuid.uuid4().hex}"
        self.issuer = RecordingIssuer()
        self.entra = FakeEntra(self.issuer, tenant=TENANT, client_id=CLIENT_ID, secret=self.secret)
        self.foundry = FakeFoundry(self.issuer)
        self.entra_server = ServerThread(self.entra.app).start()
        self.foundry_server = ServerThread(self.foundry).start()
        self.env = (
            clean_environment()
            | {
                "FOUNDRY_PROXY_UPSTREAM": self.foundry_server.url,
                "AZURE_AUTHORITY_HOST": self.entra_server.url,
                "AZURE_TENANT_ID": TENANT,
                "AZURE_CLIENT_ID": CLIENT_ID,
                "AZURE_CLIENT_SECRET": self.secret,
                "FOUNDRY_PROXY_LOG_LEVEL": "debug",
                # The fakes' test routes (status codes, redirects, truncation...) are not real
                # Azure operations; the default policy has its own tests (test_policy.py).
                "FOUNDRY_PROXY_POLICY": "open",
            }
            | env
        )
        self.proxy: ProxyProcess | None = None

    def start_proxy(self, *args: str, ready: bool = True) -> ProxyProcess:
        self.proxy = ProxyProcess(self.env, args).wait_listening()
        if ready:
            self.proxy.wait_ready()
        return self.proxy

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def canaries(self) -> list[str]:
        """Strings that must never appear in a log or a response: the secret, its random part's
        first and last 8 characters, its base64 and URL-encoded forms (test-plan D35), and
        every token issued."""
        random_part = self.secret.removeprefix("CANARY-SECRET-")
        encoded = base64.b64encode(self.secret.encode()).decode()
        return [
            self.secret,
            random_part[:8],
            random_part[-8:],
            encoded,
            encoded.rstrip("="),
            urllib.parse.quote(self.secret, safe=""),
            *self.issuer.canaries(),
        ]

    def leaks(self, text: str) -> list[str]:
        return [c for c in self.canaries() if c in text]

    def close(self) -> str:
        log = ""
        if self.proxy is not None:
            self.proxy.stop()
            log = self.proxy.log
        self.foundry_server.stop()
        self.entra_server.stop()
        return log


def run_proxy(
    args: list[str], env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python -m proxy ARGS`` to completion (startup errors, ``check``), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def chat_load(url: str, seconds: float, workers: int = 4) -> tuple[int, list[str]]:
    """Send chat requests from ``workers`` threads for ``seconds``; return (ok, failures)."""
    failures: list[str] = []
    ok = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    chat = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}

    def worker() -> None:
        nonlocal ok
        with httpx2.Client(timeout=10) as client:
            while time.monotonic() < stop:
                r = client.post(url + "/v1/chat/completions", json=chat)
                with lock:
                    if r.status_code == 200:
                        ok += 1
                    else:
                        failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok, failures


def openai_client(url: str, **kwargs: Any) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key="no-secret-here", max_retries=0, **kwargs)
