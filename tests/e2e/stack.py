"""A whole test deployment on loopback: fake Entra, fake Foundry, and the real proxy process.

The proxy runs as ``python -m proxy`` in a subprocess, exactly as users start it, configured
only through its environment; its output is captured so tests can read (and scan) its logs, and
it is ended with its whole process group whatever the test's outcome (tests/support).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2

from tests.fakes.entra import FakeEntra
from tests.fakes.foundry import FakeFoundry
from tests.fakes.serve import ServerThread
from tests.fakes.tokens import RecordingIssuer
from tests.support.chat import CHAT, CHAT_PATH
from tests.support.identities import CLIENT_ID, TENANT
from tests.support.processes import Child, run
from tests.support.readiness import wait_for_status

# The proxy's "where to connect" line, written once the address accepts connections.
LISTENING = r"listening on http://127\.0\.0\.1:(\d+)"


def clean_environment() -> dict[str, str]:
    """The test runner's environment without anything that could configure the proxy."""
    drop = ("AZURE_", "FOUNDRY_PROXY_", "OPENAI_", "IDENTITY_", "MSI_")
    return {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(drop) and not k.lower().endswith("_proxy")
    }


class ProxyProcess:
    """``python -m proxy`` on a free loopback port, in a process group of its own."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.child = Child([sys.executable, "-m", "proxy", "--port", "0", *args], env=env)
        self.proc = self.child.proc
        self.lines = self.child.out  # stdout and stderr, as written
        self.port = 0

    def wait_listening(self, timeout: float = 30) -> ProxyProcess:
        """Until the proxy says where it listens and answers /healthz there."""
        try:
            found = self.child.wait_for_line(LISTENING, timeout)
            if found is None:
                raise RuntimeError("proxy did not start:\n" + self.log)
            self.port = int(found.group(1))
            if not wait_for_status(self.url + "/healthz", 200, timeout):
                raise RuntimeError("proxy never answered /healthz:\n" + self.log)
        except BaseException:
            self.child.end()
            raise
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        if not wait_for_status(self.url + "/readyz", 200, timeout):
            raise AssertionError("proxy never became ready:\n" + self.log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Stop with ``sig`` (killed after ``timeout`` s), process group and pipes included."""
        return self.child.stop(sig, timeout)


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
        # SDK clients made for this stack, closed with it: an SDK client left to the garbage
        # collector leaves its pooled sockets open, and the collector may run only at exit.
        self.clients: list[Any] = []

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
        first and last 8 characters, its base64 and URL-encoded forms (docs/security.md, D35), and
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
        try:
            for client in self.clients:
                client.close()
            if self.proxy is not None:
                self.proxy.stop()
                log = self.proxy.log
        finally:
            self.foundry_server.stop()
            self.entra_server.stop()
        return log


def run_proxy(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m proxy ARGS`` to completion (startup errors, ``check``), output captured."""
    return run([sys.executable, "-m", "proxy", *args], env=env, timeout=timeout)


def chat_load(url: str, seconds: float, workers: int = 4) -> tuple[int, list[str]]:
    """Send chat requests from ``workers`` threads for ``seconds``; return (ok, failures)."""
    failures: list[str] = []
    ok = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        nonlocal ok
        with httpx2.Client(timeout=10) as client:
            while time.monotonic() < stop:
                r = client.post(url + CHAT_PATH, json=CHAT)
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


def openai_client(s: Stack, **kwargs: Any) -> Any:
    """An OpenAI SDK client for ``s``'s proxy, closed when ``s`` is."""
    from openai import OpenAI

    client = OpenAI(base_url=s.url + "/v1", api_key="no-secret-here", max_retries=0, **kwargs)
    s.clients.append(client)
    return client


def serving(s: Stack) -> Iterator[Stack]:
    """``s`` with its proxy started, for a fixture to ``yield from``; on teardown the proxy and
    fakes are closed and the proxy's whole log is scanned for the canary secret and tokens."""
    try:
        s.start_proxy()
        yield s
    finally:
        log = s.close()
        assert not s.leaks(log), "a secret or token reached the proxy's log"
