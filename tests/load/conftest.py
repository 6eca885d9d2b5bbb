from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "load: full-size load cases (1,000 streams of 200 events); opt in with -m load",
    )
    config.addinivalue_line(
        "markers",
        "soak: hours-long run (docs/security.md, H67); opt in: -m soak, FOUNDRY_PROXY_SOAK_SECONDS",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``load`` cases run only when asked for by a -m expression that names them."""
    chosen = config.getoption("markexpr") or ""
    for marker, reason in (
        ("load", "full-size load case: run with -m load"),
        ("soak", "soak run: run with -m soak (FOUNDRY_PROXY_SOAK_SECONDS sets its length)"),
    ):
        if marker in chosen:
            continue
        for item in items:
            if item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
