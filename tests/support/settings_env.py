"""What the settings tests share: an app registration's credential, an environment with no
settings from outside the test, and the problems a rejected configuration names
(docs/settings.md)."""

from __future__ import annotations

import os

import pytest

from proxy.errors import ConfigError
from proxy.settings import load_settings

#: A well-formed client-secret app registration (the values are made up).
APP_CREDENTIAL = {
    "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "client_id": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    "client_secret": "abc~DEF123",
}


def clear_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every AZURE_* and FOUNDRY_PROXY_* variable for the test, so that only the values
    it passes count (the developer's own shell may hold some)."""
    for key in list(os.environ):
        if key.startswith(("AZURE_", "FOUNDRY_PROXY_")):
            monkeypatch.delenv(key)


def settings_problems(**values: object) -> list[str]:
    """The problems load_settings(**values) names; it failing to raise fails the test."""
    with pytest.raises(ConfigError) as info:
        load_settings(**values)
    return info.value.problems
