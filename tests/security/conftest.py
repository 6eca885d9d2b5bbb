"""Fixtures for the security suite (docs/security.md, sections A, B and C)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.stack import Stack, serving
from tests.fakes.evil import EvilListeners, ScriptedUpstream
from tests.fakes.serve import ServerThread


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fuzz: long fuzzing runs (A14); skipped unless FOUNDRY_PROXY_FUZZ_EXAMPLES is set",
    )


@pytest.fixture(scope="session")
def evil() -> Iterator[EvilListeners]:
    """Listeners on 127.0.0.2 and 127.0.0.3 that no request may ever reach."""
    listeners = EvilListeners().start()
    try:
        yield listeners
    finally:
        listeners.stop()


@pytest.fixture
def quiet() -> Iterator[Stack]:
    """A proxy without the access log and debug lines: floods would fill the captured log."""
    yield from serving(Stack(FOUNDRY_PROXY_LOG_LEVEL="info", FOUNDRY_PROXY_ACCESS_LOG="off"))


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Stack, ScriptedUpstream]]:
    """A proxy whose upstream is a ScriptedUpstream (redirects, hop-by-hop fields, gzip,
    cookies), one per test module; its log must hold no secret or token."""
    upstream = ScriptedUpstream()
    server = ServerThread(upstream).start()
    s = Stack(FOUNDRY_PROXY_UPSTREAM=server.url)
    try:
        s.start_proxy()
        yield s, upstream
    finally:
        log = s.close()
        server.stop()
        assert not s.leaks(log), "a secret or token reached the proxy's log"
