"""The azure-identity escape hatch: how its failures reach the provider."""

from __future__ import annotations

import asyncio

import pytest

from proxy.credentials.azure_identity import DelegatedCredential
from proxy.errors import CredentialUnavailable

CHAIN_FAILURE = """DefaultAzureCredential failed to retrieve a token from the included credentials.
Attempted credentials:
\tEnvironmentCredential: EnvironmentCredential authentication unavailable.
\tManagedIdentityCredential: ManagedIdentityCredential authentication unavailable, no response.
\tAzureCliCredential: Please run 'az login' to set up an account
To mitigate this issue, please refer to the troubleshooting guidelines here at https://aka.ms/x.
"""


def test_a_chain_failure_is_transient_and_keeps_each_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    credential = DelegatedCredential()

    async def fail(scope: str) -> object:
        raise ClientAuthenticationError(message=CHAIN_FAILURE + "eyJhbGciOi.eyJzdWIi.c2ln")

    monkeypatch.setattr(credential._inner, "get_token_info", fail)

    async def run() -> CredentialUnavailable:
        try:
            await credential.get_token("https://cognitiveservices.azure.com/.default")
        except CredentialUnavailable as exc:
            return exc
        finally:
            await credential.aclose()
        raise AssertionError("no error")

    error = asyncio.run(run())
    assert not error.permanent  # a slow IMDS at boot must not get the long backoff
    assert "AzureCliCredential: Please run 'az login'" in error.message
    assert "ManagedIdentityCredential: " in error.message
    assert "troubleshooting" not in error.message
    assert "eyJ" not in error.message
