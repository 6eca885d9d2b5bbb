from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.stack import Stack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One proxy with its fakes, shared by a module's tests that do not change its setup.

    On teardown the proxy's whole DEBUG log is scanned for the canary secret and tokens.
    """
    s = Stack()
    s.start_proxy()
    try:
        yield s
    finally:
        log = s.close()
        assert not s.leaks(log), "a secret or token reached the proxy's log"


@pytest.fixture
def fresh_stack() -> Iterator[Stack]:
    """A stack whose fakes a test may reconfigure before calling start_proxy()."""
    s = Stack()
    try:
        yield s
    finally:
        log = s.close()
        assert not s.leaks(log), "a secret or token reached the proxy's log"
