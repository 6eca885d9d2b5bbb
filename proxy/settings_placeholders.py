"""Values still holding config.example.env's placeholders.

They are well-formed on purpose (a GUID, an https origin), so that the example reads like a
real file; the nil GUID and the ``myresource`` host can never work, though. A proxy started
with them would look healthy and fail every request, so startup refuses them and `check`
names them: in every item of a FOUNDRY_PROXY_UPSTREAM list and every backend of a backends
file too (docs/backends.md), a pool's placeholder being as dead as a single upstream's.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from proxy.clouds import cloud_of_host
from proxy.settings_values import BACKEND_NAME, BACKENDS_FILE, NIL_GUID, UPSTREAM

#: The host label config.example.env (and the Kubernetes manifests) use for the resource.
EXAMPLE_RESOURCE = "myresource"
_UPSTREAM_PLACEHOLDER = (
    f"still the example's placeholder (the resource name {EXAMPLE_RESOURCE}): set the "
    "endpoint shown on your resource's Keys and Endpoint page (origin only)"
)


def _nil_guid(value: str) -> bool:
    return value.strip().lower() == NIL_GUID


def _example_host(value: str) -> bool:
    try:
        host = (urlsplit(value.strip()).hostname or "").lower()
    except ValueError:
        return False
    label, _, rest = host.partition(".")
    return label == EXAMPLE_RESOURCE and cloud_of_host(f".{rest}") is not None


def _elided_resource_id(value: str) -> bool:
    # The example's "/subscriptions/.../userAssignedIdentities/my-identity".
    return "/.../" in value


_PLACEHOLDERS: Mapping[str, tuple[Callable[[str], bool], str, str]] = MappingProxyType(
    {
        "AZURE_TENANT_ID": (
            _nil_guid,
            "the nil GUID",
            "set your Directory (tenant) ID, shown on Microsoft Entra ID > Overview",
        ),
        "AZURE_CLIENT_ID": (
            _nil_guid,
            "the nil GUID",
            "set the App Registration's Application (client) ID, shown on its Overview page "
            "(for a system-assigned managed identity, remove the line)",
        ),
        "FOUNDRY_PROXY_MANAGED_IDENTITY_OBJECT_ID": (
            _nil_guid,
            "the nil GUID",
            "set the managed identity's Object (principal) ID",
        ),
        "FOUNDRY_PROXY_MANAGED_IDENTITY_RESOURCE_ID": (
            _elided_resource_id,
            "an elided resource ID",
            "set the identity's full resource ID, shown on its Properties page",
        ),
    }
)


def _upstream_problems(value: str) -> list[str]:
    """One problem per item of FOUNDRY_PROXY_UPSTREAM (one origin or a comma-separated list)
    that is the example's endpoint, naming the item when there are several."""
    items = value.split(",")
    if len(items) == 1:
        return [f"{UPSTREAM}: {_UPSTREAM_PLACEHOLDER}"] if _example_host(value) else []
    return [
        f"{UPSTREAM}: item {number}: {_UPSTREAM_PLACEHOLDER}"
        for number, item in enumerate(items, 1)
        if _example_host(item)
    ]


def _backends_file_problems(value: str) -> list[str]:
    """One problem per backend of a backends file whose origin is the example's endpoint.
    A file that cannot be read or parsed yields none here: backend_config reports it."""
    path = Path(value.strip())
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    entries = data.get("backend")
    if not isinstance(entries, list):
        return []
    problems: list[str] = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            continue
        origin = entry.get("origin")
        if not isinstance(origin, str) or not _example_host(origin):
            continue
        name = entry.get("name")
        named = f" ({name})" if isinstance(name, str) and BACKEND_NAME.fullmatch(name) else ""
        problems.append(
            f"{BACKENDS_FILE} ({path.name}): backend {number}{named}: origin "
            f"{_UPSTREAM_PLACEHOLDER}"
        )
    return problems


def placeholder_problems(values: Mapping[str, str | None]) -> list[str]:
    """One problem per setting (keyed by environment variable name), list item or backend
    that still holds one of the example's placeholders."""
    problems: list[str] = []
    if upstream := values.get(UPSTREAM):
        problems += _upstream_problems(upstream)
    if (backends_file := values.get(BACKENDS_FILE)) and backends_file.strip():
        problems += _backends_file_problems(backends_file)
    return problems + [
        f"{name}: still the example's placeholder ({what}): {fix}"
        for name, (matches, what, fix) in _PLACEHOLDERS.items()
        if (value := values.get(name)) and matches(value)
    ]
