"""Values still holding config.example.env's placeholders.

They are well-formed on purpose (a GUID, an https origin), so that the example reads like a
real file; the nil GUID and the ``myresource`` host can never work, though. A proxy started
with them would look healthy and fail every request, so startup refuses them and `check`
names them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from urllib.parse import urlsplit

from proxy.clouds import cloud_of_host
from proxy.settings_values import NIL_GUID

#: The host label config.example.env (and the Kubernetes manifests) use for the resource.
EXAMPLE_RESOURCE = "myresource"


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
        "FOUNDRY_PROXY_UPSTREAM": (
            _example_host,
            f"the resource name {EXAMPLE_RESOURCE}",
            "set the endpoint shown on your resource's Keys and Endpoint page (origin only)",
        ),
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


def placeholder_problems(values: Mapping[str, str | None]) -> list[str]:
    """One problem per setting (keyed by environment variable name) that still holds one of
    the example's placeholders."""
    return [
        f"{name}: still the example's placeholder ({what}): {fix}"
        for name, (matches, what, fix) in _PLACEHOLDERS.items()
        if (value := values.get(name)) and matches(value)
    ]
