from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "load: plan-size load cases (1,000 streams of 200 events); opt in with -m load",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``load`` cases run only when asked for by a -m expression that names them."""
    if "load" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="full-size load case: run with -m load")
    for item in items:
        if item.get_closest_marker("load") is not None:
            item.add_marker(skip)
