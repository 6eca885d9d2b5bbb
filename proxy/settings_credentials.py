"""Which credential the settings describe: the kinds, what each needs, and FOUNDRY_PROXY_CREDENTIAL
=auto resolved as far as the settings alone can tell.

The App Registration kinds (secret, certificate, workload identity) are chosen here, from the
settings present; the platform kinds (managed identity, the CLIs) need a probe of the machine
and are chosen by credentials/selection.py, from what this leaves as ``auto``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import cast

from proxy.settings_schema import CredentialChoice, SettingsFields

# The App Registration's credential settings, in the order auto-detection tries them.
CREDENTIAL_SETTINGS = MappingProxyType(
    {
        "client_secret": "AZURE_CLIENT_SECRET",
        "client_secret_file": "AZURE_CLIENT_SECRET_FILE",
        "client_certificate_path": "AZURE_CLIENT_CERTIFICATE_PATH",
        "federated_token_file": "AZURE_FEDERATED_TOKEN_FILE",
    }
)
APP_KIND = MappingProxyType(
    {
        "AZURE_CLIENT_SECRET": "secret",
        "AZURE_CLIENT_SECRET_FILE": "secret",
        "AZURE_CLIENT_CERTIFICATE_PATH": "certificate",
        "AZURE_FEDERATED_TOKEN_FILE": "workload-identity",
    }
)
REQUIRED_FOR = MappingProxyType(
    {
        "secret": ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_SECRET_FILE"),
        "certificate": ("AZURE_CLIENT_CERTIFICATE_PATH",),
        "workload-identity": ("AZURE_FEDERATED_TOKEN_FILE",),
    }
)
KIND_NAMES = MappingProxyType(
    {
        "auto": "auto-detected credential",
        "certificate": "certificate",
        "workload-identity": "workload identity",
        "azure-cli": "Azure CLI",
        "azd": "Azure Developer CLI",
        "azure-identity": "azure-identity DefaultAzureCredential",
    }
)
NO_CREDENTIAL = (
    "no credential configured: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET "
    "(or AZURE_CLIENT_SECRET_FILE, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE); "
    "managed identity and `az login` are detected when none is set"
)


def app_credentials_given(fields: SettingsFields) -> list[str]:
    """The App Registration credential settings present (their names, never values)."""
    return [env for field, env in CREDENTIAL_SETTINGS.items() if getattr(fields, field)]


def resolved_kind(fields: SettingsFields) -> CredentialChoice:
    """FOUNDRY_PROXY_CREDENTIAL with auto replaced by the App Registration kind configured, if
    any is (the first in auto-detection's order; more than one is a problem of its own);
    ``auto`` when none is: the platform decides (credentials/selection.py)."""
    given = app_credentials_given(fields)
    if fields.credential == "auto" and given:
        return cast(CredentialChoice, APP_KIND[given[0]])
    return fields.credential


def credential_problems(fields: SettingsFields) -> list[str]:
    """What stops the chosen (or configured) credential from working, from the settings."""
    given = app_credentials_given(fields)
    kind = resolved_kind(fields)
    if fields.credential == "auto" and len(given) > 1:
        return [
            f"{' and '.join(given)}: set only one way for the app to prove its identity "
            "(or choose one with FOUNDRY_PROXY_CREDENTIAL)"
        ]
    if kind in REQUIRED_FOR:
        options = REQUIRED_FOR[kind]
        present = [env for env in options if env in given]
        problems = []
        if not present:
            problems.append(
                f"FOUNDRY_PROXY_CREDENTIAL={kind} needs {' or '.join(options)}: is required"
            )
        elif len(present) > 1:
            problems.append(f"{' and '.join(present)}: set only one of them")
        for field, env in (("tenant_id", "AZURE_TENANT_ID"), ("client_id", "AZURE_CLIENT_ID")):
            if getattr(fields, field) is None:
                problems.append(f"{env}: is required for FOUNDRY_PROXY_CREDENTIAL={kind}")
        return problems
    return managed_identity_problems(fields) if kind == "managed-identity" else []


def other_identity_platform(fields: SettingsFields) -> str | None:
    """Azure Arc or Service Fabric, whose identity endpoints look like App Service's but speak
    another protocol (docs/azure.md)."""
    if fields.identity_server_thumbprint:
        return "Service Fabric"
    if fields.arc_imds_endpoint:
        return "Azure Arc"
    return None


def managed_identity_problems(fields: SettingsFields) -> list[str]:
    """What stops a managed identity from working with these settings (checked when that kind
    is chosen, explicitly or by auto-detection)."""
    problems = []
    if platform := other_identity_platform(fields):
        problems.append(
            f"IDENTITY_ENDPOINT: this is {platform}, whose managed identity foundry-proxy "
            "reaches through azure-identity: set FOUNDRY_PROXY_CREDENTIAL=azure-identity"
        )
    elif (fields.identity_endpoint is None) != (fields.identity_header is None):
        problems.append(
            "IDENTITY_ENDPOINT and IDENTITY_HEADER: set both (App Service and Container Apps "
            "inject them together) or neither"
        )
    selectors = [
        env
        for value, env in (
            (fields.client_id, "AZURE_CLIENT_ID"),
            (fields.managed_identity_object_id, "FOUNDRY_PROXY_MANAGED_IDENTITY_OBJECT_ID"),
            (fields.managed_identity_resource_id, "FOUNDRY_PROXY_MANAGED_IDENTITY_RESOURCE_ID"),
        )
        if value
    ]
    if len(selectors) > 1:
        problems.append(f"{' and '.join(selectors)}: name a user-assigned identity in one way only")
    return problems


def kind_name(fields: SettingsFields) -> str:
    """The credential in use, for logs and errors."""
    kind = resolved_kind(fields)
    if kind == "secret":
        return "client secret" if fields.client_secret is not None else "client secret file"
    if kind == "managed-identity":
        where = "App Service" if fields.identity_endpoint else "IMDS"
        return f"managed identity ({where})"
    return KIND_NAMES[kind]
