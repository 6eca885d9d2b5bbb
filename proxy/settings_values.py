"""The shapes of single setting values: origins, scopes, Entra identifiers, secrets.

Pure functions, shared by the settings schema and by `check`, so that both apply one rule.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from proxy.addresses import is_loopback_host
from proxy.clouds import COGNITIVE_SERVICES_SCOPE

UPSTREAM = "FOUNDRY_PROXY_UPSTREAM"
BACKENDS_FILE = "FOUNDRY_PROXY_BACKENDS_FILE"
#: A backend's short name: what logs and metrics call it (a label value, so short and plain).
#: Matched whole (fullmatch): "$" would let a trailing newline through.
BACKEND_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]{2,63}$"
)
#: Multi-tenant aliases cannot mint app-only tokens: client credentials need one real tenant.
TENANT_ALIASES = frozenset({"common", "organizations", "consumers"})
#: The nil GUID: never a real tenant, application or identity (a placeholder).
NIL_GUID = "00000000-0000-0000-0000-000000000000"


def is_guid(value: str) -> bool:
    return bool(_GUID.match(value.strip()))


def is_domain(value: str) -> bool:
    return bool(_DOMAIN.match(value.strip()))


def looks_like_secret_id(secret: str) -> bool:
    """A client secret that is a GUID is almost always the secret's ID, shown next to its Value
    in the portal; Entra answers AADSTS7000215 to it."""
    return is_guid(secret)


def tenant(value: str) -> str:
    value = value.strip()
    if value.lower() in TENANT_ALIASES:
        raise ValueError(
            f"{value!r} cannot issue app tokens: use your tenant's ID (a GUID) "
            "or its domain such as contoso.onmicrosoft.com"
        )
    if not (is_guid(value) or is_domain(value)):
        raise ValueError("must be a tenant ID (a GUID) or a domain like contoso.onmicrosoft.com")
    return value


def guid(value: str, what: str) -> str:
    value = value.strip()
    if not is_guid(value):
        raise ValueError(f"must be {what}, a GUID")
    return value


def resource_id(value: str) -> str:
    value = value.strip()
    if not value.lower().startswith("/subscriptions/"):
        raise ValueError(
            "must be an Azure resource ID: /subscriptions/<id>/resourceGroups/<group>/"
            "providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>"
        )
    return value


def local_endpoint(value: str) -> str:
    """A managed identity endpoint: plain http on a local or link-local address by design (the
    platform's own agent), so http is allowed whatever the host."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// URL")
    return value.strip().rstrip("/")


def origin(value: str, example: str, *, allow_path: bool) -> str:
    """Validate an absolute http(s) URL and return it without a trailing slash.

    https is required except for loopback hosts (local emulators and tests); userinfo, query
    and fragment are refused so the string used is exactly the string checked.
    """
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"must be an absolute https:// URL such as https://{example}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain a user name or password")
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query string or fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError("has an invalid port") from exc
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError("must use https:// (plain http is allowed only for loopback hosts)")
    path = parts.path.rstrip("/")
    if path and not allow_path:
        raise ValueError(
            f"must be the resource origin only, without the path {path!r} "
            "(for example https://myresource.openai.azure.com)"
        )
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{path}"


def scope(value: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("https", "api") or not value.endswith("/.default") or " " in value:
        raise ValueError(
            f"must be one resource followed by /.default, for example {COGNITIVE_SERVICES_SCOPE}"
        )
    return value
