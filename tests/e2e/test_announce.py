"""Ready means listening: a line that tells a person or a script where to connect (the proxy's
`listening on`, the Unix socket's, the `--workers` supervisor's, the demo's banner) is written
only once that address accepts connections.

Each case starts the real process ten times and, from the thread reading its output, connects
to every address such a line names at the instant the line is read, before reading on. Every
connection must succeed, and the proxy must then answer on it.
"""

from __future__ import annotations

import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, clean_environment
from tests.support.processes import Child
from tests.support.rawsock import request

pytestmark = pytest.mark.e2e

RUNS = 10
HTTP_ADDRESS = re.compile(r"http://(127\.0\.0\.1):(\d+)")
UNIX_ADDRESS = re.compile(r"unix:(\S+)")
# Lines that say where to connect, as the proxy and the demo write them.
WHERE = ("listening on", "OpenAI SDKs:", "  proxy ", "emulated Entra ID", "emulated Foundry")


class Dialer:
    """Connects to each address a where-to-connect line names, as soon as the line is read."""

    def __init__(self) -> None:
        self.connected: dict[str, socket.socket] = {}
        self.refused: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, stream: str, line: str) -> None:
        if not any(w in line for w in WHERE):
            return
        for host, port in HTTP_ADDRESS.findall(line):
            self._dial(f"{host}:{port}", socket.AF_INET, (host, int(port)))
        for path in UNIX_ADDRESS.findall(line):
            self._dial(f"unix:{path}", socket.AF_UNIX, path)

    def _dial(self, name: str, family: socket.AddressFamily, address: object) -> None:
        with self._lock:  # stdout's and stderr's readers may name the same address at once
            if name in self.connected:
                return
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(5)
            try:
                sock.connect(address)
            except OSError as exc:
                sock.close()
                self.refused.append(f"{name}: {exc}")
                return
            self.connected[name] = sock

    def answer(self, name: str, path: str) -> bytes:
        """Send GET ``path`` on the connection made to ``name``; the whole answer."""
        sock = self.connected[name]
        sock.settimeout(60)  # a worker may still be starting; the kernel holds the connection
        sock.sendall(request(f"GET {path} HTTP/1.1", "Connection: close"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer

    def close(self) -> None:
        for sock in self.connected.values():
            sock.close()


def _proxy_address(dialer: Dialer) -> str:
    # The "listening on" line names the proxy first, then the upstream (a fake, listening too).
    return next(iter(dialer.connected))


@pytest.fixture
def fakes() -> Iterator[Stack]:
    """Fake Entra and Foundry for the proxy to start against; no proxy yet."""
    s = Stack()
    try:
        yield s
    finally:
        s.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("workers", [1, 2], ids=["tcp", "workers"])
def test_connecting_the_instant_the_proxy_says_listening_succeeds(
    fakes: Stack, workers: int
) -> None:
    s = fakes
    s.env["FOUNDRY_PROXY_LOG_LEVEL"] = "info"
    argv = [sys.executable, "-m", "proxy", "--port", "0", "--workers", str(workers)]
    for run in range(RUNS):
        dialer = Dialer()
        with Child(argv, env=s.env, on_line=dialer) as child:
            try:
                assert child.wait_for_line("OpenAI SDKs:", 60), child.stdout
                assert not dialer.refused, f"run {run}: refused: {dialer.refused}"
                proxy = _proxy_address(dialer)
                assert dialer.answer(proxy, "/healthz").startswith(b"HTTP/1.1 200 "), proxy
            finally:
                dialer.close()
            assert child.stop(signal.SIGTERM, 30) == 0, child.stdout


@pytest.mark.timeout(600)
def test_connecting_the_instant_the_unix_socket_is_announced_succeeds(
    fakes: Stack, tmp_path: Path
) -> None:
    s = fakes
    path = tmp_path / "proxy.sock"
    s.env["FOUNDRY_PROXY_UDS"] = str(path)
    s.env["FOUNDRY_PROXY_LOG_LEVEL"] = "info"
    argv = [sys.executable, "-m", "proxy", "--port", "0"]
    for run in range(RUNS):
        dialer = Dialer()
        with Child(argv, env=s.env, on_line=dialer) as child:
            try:
                assert child.wait_for_line("OpenAI SDKs:", 60), child.stdout
                assert not dialer.refused, f"run {run}: refused: {dialer.refused}"
                unix = f"unix:{path}"
                assert unix in dialer.connected, child.stdout
                assert dialer.answer(unix, "/healthz").startswith(b"HTTP/1.1 200 ")
            finally:
                dialer.close()
            assert child.stop(signal.SIGTERM, 30) == 0, child.stdout
        assert not path.exists(), "the socket file outlived the proxy"


@pytest.mark.timeout(600)
def test_connecting_the_instant_the_demo_prints_its_banner_succeeds() -> None:
    """The banner names the proxy and both emulators; each accepts at once."""
    argv = [sys.executable, "-m", "proxy", "demo", "--port", "0"]
    banner = re.compile(r"^\s+(proxy|emulated Entra ID|emulated Foundry)\s+(http://\S+)")
    for run in range(RUNS):
        dialer = Dialer()
        with Child(argv, env=clean_environment(), merge=False, on_line=dialer) as child:
            try:
                assert child.wait_for_line("Readiness:", 60), child.stdout + child.stderr
                assert not dialer.refused, f"run {run}: refused: {dialer.refused}"
                named = dict(m.groups() for line in child.out if (m := banner.match(line)))
                assert set(named) == {"proxy", "emulated Entra ID", "emulated Foundry"}
                for url in named.values():
                    assert url.removeprefix("http://") in dialer.connected, url
                proxy = named["proxy"].removeprefix("http://")
                assert dialer.answer(proxy, "/healthz").startswith(b"HTTP/1.1 200 ")
            finally:
                dialer.close()
            assert child.stop(signal.SIGINT, 30) == 0, child.stderr
