"""The one place that decides which credential kind the settings describe."""

from __future__ import annotations

import httpx2

from proxy.credentials.base import Credential
from proxy.credentials.client_credentials import ClientCredentials, SecretAuth
from proxy.settings import Settings


def credential_from_settings(settings: Settings, http: httpx2.AsyncClient) -> Credential:
    return ClientCredentials(
        authority_host=settings.authority_host,
        tenant_id=settings.tenant_id,
        client_id=settings.client_id,
        auth=SecretAuth(settings.client_secret),
        http=http,
    )
