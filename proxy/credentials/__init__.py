"""Obtaining and holding Entra ID tokens. Never imports the web framework."""

from proxy.credentials.base import AccessToken, Credential
from proxy.credentials.factory import credential_from_settings
from proxy.credentials.provider import TokenProvider, TokenStatus
from proxy.credentials.schedule import RetryPolicy

__all__ = [
    "AccessToken",
    "Credential",
    "RetryPolicy",
    "TokenProvider",
    "TokenStatus",
    "credential_from_settings",
]
