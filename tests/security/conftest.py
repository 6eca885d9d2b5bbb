"""Fixtures for the security suite (test plan sections A, B and C)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.evil import EvilListeners


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
