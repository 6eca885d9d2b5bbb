"""The settings reference (docs/settings.md) and config.example.env stay complete.

The list of settings is taken from the settings model itself (every field's environment
variable name), so a setting added to the model without a line in both files fails here, and
so does a documented FOUNDRY_PROXY_* name the proxy no longer reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import AliasChoices, AliasPath

from proxy.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = (ROOT / "docs" / "settings.md", ROOT / "config.example.env")
# A name as written in prose, a table or an env file line: whole words only, so that
# FOUNDRY_PROXY_API_KEYS is not found inside FOUNDRY_PROXY_API_KEYS_FILE.
_NAME = r"(?<![A-Za-z0-9_]){}(?![A-Za-z0-9_])"
_OURS = re.compile(r"(?<![A-Za-z0-9_])FOUNDRY_PROXY_[A-Z0-9_]*[A-Z0-9]")


def _names(alias: str | AliasChoices | AliasPath | None) -> set[str]:
    if alias is None:
        return set()
    if isinstance(alias, str):
        return {alias}
    if isinstance(alias, AliasPath):
        return {str(alias.path[0])}
    return set().union(*(_names(choice) for choice in alias.choices))


def setting_names() -> set[str]:
    """Every environment variable name the settings model reads (all aliases of all fields)."""
    names: set[str] = set()
    for field in Settings.model_fields.values():
        names |= _names(field.validation_alias) | _names(field.alias)
    return names


def test_the_model_reads_the_names_this_test_expects() -> None:
    """Guards the test itself: if the model stopped exposing its names as aliases, every
    check below would pass on an empty list."""
    names = setting_names()
    assert len(names) > 40
    assert {"FOUNDRY_PROXY_UPSTREAM", "AZURE_CLIENT_SECRET", "IDENTITY_ENDPOINT"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_setting_is_documented(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    missing = sorted(n for n in setting_names() if not re.search(_NAME.format(n), text))
    assert not missing, f"{document.relative_to(ROOT)} does not mention: {', '.join(missing)}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_documented_name_is_a_setting(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    unknown = sorted(set(_OURS.findall(text)) - setting_names())
    assert not unknown, f"{document.relative_to(ROOT)} names settings that do not exist: {unknown}"
