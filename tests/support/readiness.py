"""Waiting for something to become true, without ever waiting forever.

Every loop here has a deadline, and a server that refuses connections (not listening yet, or
gone) is a "not yet", not an error: the caller decides what a missed deadline means.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx2


def wait_until(predicate: Callable[[], object], timeout: float, every: float = 0.01) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; True if it became so."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


def status_of(url: str, timeout: float = 2) -> int | None:
    """The status a GET of ``url`` answers with; None when the server cannot be reached."""
    try:
        return httpx2.get(url, timeout=timeout).status_code
    except httpx2.TransportError:
        return None


def wait_for_status(url: str, status: int, timeout: float) -> bool:
    """Until a GET of ``url`` answers ``status``; refused connections and timeouts are retried
    until the deadline."""
    return wait_until(lambda: status_of(url) == status, timeout, every=0.05)
