"""A proxy in front of two fake Realtime resources (a primary and a secondary backend)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.e2e.stack import Stack
from tests.fakes.realtime import FakeRealtime
from tests.fakes.serve import ServerThread


@contextmanager
def realtime_pair() -> Iterator[tuple[FakeRealtime, FakeRealtime, str]]:
    """The two fakes and the proxy's Realtime URL; everything stopped afterwards, and the
    proxy's log checked for leaks when the block succeeded."""
    stack = Stack()
    primary, secondary = FakeRealtime(stack.issuer), FakeRealtime(stack.issuer)
    servers = [ServerThread(primary).start(), ServerThread(secondary).start()]
    try:
        stack.env["FOUNDRY_PROXY_UPSTREAM"] = ",".join(s.url for s in servers)
        stack.start_proxy()
        yield primary, secondary, "ws" + stack.url.removeprefix("http") + "/v1/realtime?model=dep"
    finally:
        log = stack.close()
        for server in servers:
            server.stop()
    assert not stack.leaks(log)
