from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.e2e.stack import Stack, serving
from tests.support.processes import end_all


@pytest.fixture(scope="module", autouse=True)
def _end_left_over_children() -> Iterator[None]:
    """Whatever a module's tests started and did not end (a test that failed half-way) is
    ended with its process group when the module is done, so that no child outlives its
    tests and pytest always exits. Module-scoped fixtures end before this one does."""
    yield
    left = end_all()
    if left:
        print(f"\nended {len(left)} process(es) left running: {left}", file=sys.stderr)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One proxy with its fakes, shared by a module's tests that do not change its setup.

    On teardown the proxy's whole DEBUG log is scanned for the canary secret and tokens.
    """
    yield from serving(Stack())


@pytest.fixture
def fresh_stack() -> Iterator[Stack]:
    """A stack whose fakes a test may reconfigure before calling start_proxy()."""
    s = Stack()
    try:
        yield s
    finally:
        log = s.close()
        assert not s.leaks(log), "a secret or token reached the proxy's log"
