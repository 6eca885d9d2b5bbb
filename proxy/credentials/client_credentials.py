"""The OAuth 2.0 client credentials grant against the Entra ID v2 token endpoint.

One flow serves every app-identity kind: only how the client proves itself differs (a secret
now; a signed assertion for certificates and workload identity), so that part is a strategy.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import httpx2
from pydantic import SecretStr

from proxy.credentials.base import AccessToken, parse_token_response
from proxy.credentials.codes import TokenErrorCode
from proxy.credentials.entra_errors import error_from_response, parse_retry_after
from proxy.errors import CredentialUnavailable, cause_of

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class ClientAuth(Protocol):
    """How the app proves its identity in the token request."""

    async def form_fields(self, token_endpoint: str) -> Mapping[str, str]: ...


class SecretAuth:
    """``client_secret`` in the form body (entra-docs v2-oauth2-client-creds-grant-flow)."""

    def __init__(self, secret: SecretStr) -> None:
        self._secret = secret

    async def form_fields(self, token_endpoint: str) -> Mapping[str, str]:
        return {"client_secret": self._secret.get_secret_value()}


class FileAuth:
    """A form field read from a file at every token request.

    Kubernetes rotates mounted secrets and projected service-account tokens in place, so the
    file is read each time (in a thread: file I/O never blocks the event loop), never cached.
    """

    def __init__(
        self, path: Path, fields: Callable[[str], Mapping[str, str]], setting: str
    ) -> None:
        self._path = path
        self._fields = fields
        self._setting = setting

    async def form_fields(self, token_endpoint: str) -> Mapping[str, str]:
        try:
            text = await asyncio.to_thread(self._path.read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialUnavailable(
                f"could not read {self._setting} ({self._path}): {type(exc).__name__}",
                code=TokenErrorCode.CREDENTIAL_FILE_UNREADABLE,
            ) from None
        if not text.strip():
            raise CredentialUnavailable(
                f"{self._setting} ({self._path}) is empty",
                code=TokenErrorCode.CREDENTIAL_FILE_EMPTY,
            )
        return self._fields(text.strip())


def secret_file_auth(path: Path) -> FileAuth:
    return FileAuth(path, lambda secret: {"client_secret": secret}, "AZURE_CLIENT_SECRET_FILE")


def federated_token_auth(path: Path) -> FileAuth:
    """Workload identity: the projected service-account token is the client assertion
    (entra-docs workload identity federation; RFC 7523 jwt-bearer assertion)."""
    return FileAuth(
        path,
        lambda token: {"client_assertion_type": JWT_BEARER, "client_assertion": token},
        "AZURE_FEDERATED_TOKEN_FILE",
    )


class ClientCredentials:
    """Credential for an App Registration (tenant, client id and a ClientAuth)."""

    def __init__(
        self,
        *,
        authority_host: str,
        tenant_id: str,
        client_id: str,
        auth: ClientAuth,
        http: httpx2.AsyncClient,
        kind: str = "client secret",
    ) -> None:
        self.kind = kind
        self.token_endpoint = f"{authority_host}/{tenant_id}/oauth2/v2.0/token"
        self._client_id = client_id
        self._auth = auth
        self._http = http

    async def get_token(self, scope: str) -> AccessToken:
        proof = await self._auth.form_fields(self.token_endpoint)
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "scope": scope,
            **proof,
        }
        try:
            response = await self._http.post(
                self.token_endpoint, data=form, headers={"Accept": "application/json"}
            )
        except httpx2.TimeoutException:
            raise CredentialUnavailable(
                f"the token request to {self.token_endpoint} timed out",
                code=TokenErrorCode.TOKEN_TIMEOUT,
            ) from None
        except httpx2.RequestError as exc:
            if cause_of(exc, socket.gaierror) is not None:
                raise CredentialUnavailable(
                    f"the login host of {self.token_endpoint} could not be resolved (DNS)",
                    code=TokenErrorCode.TOKEN_DNS_ERROR,
                ) from None
            if cause_of(exc, ssl.SSLError) is not None:
                raise CredentialUnavailable(
                    f"TLS verification failed for {self.token_endpoint}: behind a corporate "
                    "proxy, point SSL_CERT_FILE at its CA bundle",
                    code=TokenErrorCode.TOKEN_TLS_ERROR,
                ) from None
            raise CredentialUnavailable(
                f"could not reach {self.token_endpoint} ({type(exc).__name__})",
                code=TokenErrorCode.TOKEN_UNREACHABLE,
            ) from None
        try:
            body: object = response.json()
        except ValueError:
            body = None
        if response.status_code == 200:
            return parse_token_response(body)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise error_from_response(response.status_code, body, retry_after, proof.values())

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the app's lifespan."""
