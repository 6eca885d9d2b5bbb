"""FOUNDRY_PROXY_CREDENTIAL=auto: which credential kind this environment offers.

The order is the one users know from azure-identity's DefaultAzureCredential, minus what a
proxy has no use for: the App Registration kinds first (whatever the operator configured
explicitly; chosen when the settings are resolved, settings_credentials.py), then the
platform's managed identity, then a developer's own CLI login, which need a look at the machine
and are chosen here. The answer is the settings with the kind made explicit, so worker
processes and later restarts of the refresher never probe again, plus one line per kind passed
over, saying why (names of settings, never their values).
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy.errors import ConfigError
from proxy.settings import Settings
from proxy.settings_credentials import NO_CREDENTIAL
from proxy.settings_schema import CredentialChoice


@dataclass(frozen=True, slots=True)
class Choice:
    settings: Settings
    #: Why each kind tried before the chosen one did not apply.
    passed_over: tuple[str, ...] = ()


async def resolve(settings: Settings, imds_reachable: Callable[[], Awaitable[bool]]) -> Choice:
    """Make ``settings.credential`` explicit; raise ConfigError when nothing applies.

    ``imds_reachable`` is awaited only when every cheaper check failed: off Azure it costs up
    to its timeout (a connection to a link-local address that nobody answers).
    """
    if settings.credential != "auto":
        return Choice(settings)
    passed: list[str] = []

    def chosen(kind: CredentialChoice) -> Choice:
        return Choice(settings.with_detected_credential(kind), tuple(passed))

    # Still auto once resolved: no App Registration credential is configured.
    passed.append(
        "client secret, certificate, workload identity: none of AZURE_CLIENT_SECRET, "
        "AZURE_CLIENT_SECRET_FILE, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE "
        "is set"
    )
    platform = settings.other_identity_platform
    if platform is not None:
        passed.append(
            f"managed identity: this is {platform}; set FOUNDRY_PROXY_CREDENTIAL=azure-identity "
            "to use its identity"
        )
    elif settings.identity_endpoint is not None and settings.identity_header is not None:
        return _managed_identity(chosen("managed-identity"))
    else:
        passed.append(
            "managed identity (App Service): IDENTITY_ENDPOINT and IDENTITY_HEADER are not set"
        )
    if platform is None and await imds_reachable():
        return _managed_identity(chosen("managed-identity"))
    passed.append(
        f"managed identity (IMDS): no Azure IMDS answered at {settings.imds_endpoint} "
        "(not an Azure VM or node)"
    )
    # PATH is looked up, not the CLIs run: starting az costs about a second, and a CLI that is
    # installed but logged out is still the user's intent, reported with its own fix ("run
    # az login") on /readyz and by `foundry-proxy check`.
    if shutil.which("az"):
        return chosen("azure-cli")
    passed.append("Azure CLI: az is not on PATH")
    if shutil.which("azd"):
        return chosen("azd")
    passed.append("Azure Developer CLI: azd is not on PATH")
    raise ConfigError(
        [NO_CREDENTIAL, *settings.misspelt_names, *(f"auto-detection: {p}" for p in passed)]
    )


def _managed_identity(choice: Choice) -> Choice:
    problems = choice.settings.managed_identity_problems()
    if problems:
        raise ConfigError(problems)
    return choice


async def detect(settings: Settings, probe_timeout: float = 1.0) -> Choice:
    """resolve() with the real IMDS probe, over a client of its own that never uses a proxy."""
    import httpx2

    from proxy.credentials.managed_identity import imds_reachable

    async with httpx2.AsyncClient(trust_env=False) as http:
        return await resolve(
            settings, lambda: imds_reachable(http, settings.imds_endpoint, probe_timeout)
        )
