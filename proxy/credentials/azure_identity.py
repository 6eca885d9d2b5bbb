"""FOUNDRY_PROXY_CREDENTIAL=azure-identity: delegate to azure-identity's DefaultAzureCredential.

The escape hatch for environments foundry-proxy does not speak natively (Azure Arc, Service
Fabric, ADFS, Azure Pipelines, ...). The token provider still owns timing: it calls this
credential from its background refresher like any other, so requests never wait on
azure-identity. azure-identity reads its own environment variables (AZURE_TOKEN_CREDENTIALS
narrows its chain); it is an optional extra: pip install 'foundry-proxy[azure-identity]'.
"""

from __future__ import annotations

import time
from typing import Any

from proxy.credentials.base import AccessToken
from proxy.credentials.codes import TokenErrorCode
from proxy.errors import ConfigError, CredentialUnavailable
from proxy.redaction import safe_message

_MISSING = (
    "FOUNDRY_PROXY_CREDENTIAL=azure-identity needs the azure-identity package: "
    "pip install 'foundry-proxy[azure-identity]'"
)


def require_azure_identity() -> None:
    try:
        import azure.identity.aio  # noqa: F401
    except ImportError:
        raise ConfigError([_MISSING]) from None


def _attempts(message: str, limit: int = 600) -> str:
    """The chain's summary line and its "CredentialName: reason" lines, on one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reasons = [line for line in lines[1:] if ":" in line and not line.startswith("To ")]
    return safe_message("; ".join(lines[:1] + reasons), limit=limit)


class DelegatedCredential:
    kind = "azure-identity DefaultAzureCredential"

    def __init__(self) -> None:
        require_azure_identity()
        from azure.identity.aio import DefaultAzureCredential

        try:
            self._inner: Any = DefaultAzureCredential()
        except ValueError as exc:  # its own settings, e.g. a non-https AZURE_AUTHORITY_HOST
            raise ConfigError([f"azure-identity: {safe_message(str(exc))}"]) from None

    async def get_token(self, scope: str) -> AccessToken:
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        try:
            # get_token_info carries refresh_on, which MSAL-backed credentials set from Entra's
            # refresh_in; the provider honours it like a direct refresh_in.
            info = await self._inner.get_token_info(scope)
        except ClientAuthenticationError as exc:
            # DefaultAzureCredential wraps every failure of its chain in this one type, a slow
            # IMDS at boot as much as a wrong secret, so it cannot tell transient from
            # permanent: treat it as transient (short backoff) and keep the per-credential
            # reasons, which are what the user needs to read.
            raise CredentialUnavailable(
                f"azure-identity could not get a token: {_attempts(str(exc.message))}",
                code=TokenErrorCode.AZURE_IDENTITY_FAILED,
                hint="set AZURE_TOKEN_CREDENTIALS to the one credential azure-identity should "
                "use, and check its settings",
            ) from None
        except AzureError as exc:
            raise CredentialUnavailable(
                f"azure-identity could not reach its token service: {safe_message(str(exc))}",
                code=TokenErrorCode.AZURE_IDENTITY_UNAVAILABLE,
            ) from None
        now = time.time()
        expires_in = float(info.expires_on) - now
        if not info.token or expires_in <= 0:
            raise CredentialUnavailable(
                "azure-identity returned an expired or empty token",
                code=TokenErrorCode.MALFORMED_TOKEN_RESPONSE,
            )
        refresh_on = getattr(info, "refresh_on", None)
        refresh_in = float(refresh_on) - now if refresh_on else None
        if refresh_in is not None and not 0 < refresh_in < expires_in:
            refresh_in = None
        return AccessToken(token=info.token, expires_in=expires_in, refresh_in=refresh_in)

    async def aclose(self) -> None:
        await self._inner.close()
