"""The one place that decides which credential kind the settings describe."""

from __future__ import annotations

import httpx2

from proxy.credentials.client_credentials import (
    ClientAuth,
    ClientCredentials,
    SecretAuth,
    federated_token_auth,
    secret_file_auth,
)
from proxy.settings import Settings


def credential_from_settings(settings: Settings, http: httpx2.AsyncClient) -> ClientCredentials:
    auth: ClientAuth
    if settings.client_secret is not None:
        auth = SecretAuth(settings.client_secret)
    elif settings.client_secret_file is not None:
        auth = secret_file_auth(settings.client_secret_file)
    else:
        assert settings.federated_token_file is not None  # settings guarantee exactly one
        auth = federated_token_auth(settings.federated_token_file)
    return ClientCredentials(
        authority_host=settings.authority_host,
        tenant_id=settings.tenant_id,
        client_id=settings.client_id,
        auth=auth,
        http=http,
        kind=settings.credential_kind,
    )
