"""The one place that turns settings into a credential, the only branch on its kind
(docs/architecture.md, Modules)."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

import httpx2

from proxy.credentials.base import Credential
from proxy.credentials.client_credentials import (
    ClientAuth,
    ClientCredentials,
    SecretAuth,
    federated_token_auth,
    secret_file_auth,
)
from proxy.errors import ConfigError
from proxy.settings import Settings
from proxy.settings_credentials import NO_CREDENTIAL

log = logging.getLogger("foundry_proxy.token")


@dataclass(frozen=True, slots=True)
class TokenClients:
    """The HTTP clients of token traffic, owned by the app's lifespan.

    ``entra`` talks to the login host, through FOUNDRY_PROXY_TOKEN_PROXY when one is set and
    trusting FOUNDRY_PROXY_TOKEN_CA_BUNDLE on top of the system's CAs; ``identity`` talks to
    managed identity endpoints, which are local or link-local and must never go through an
    HTTP proxy (entra-docs how-to-use-vm-token: IMDS refuses proxied requests).
    """

    entra: httpx2.AsyncClient
    identity: httpx2.AsyncClient

    @classmethod
    def create(cls, settings: Settings, tls: ssl.SSLContext) -> TokenClients:
        timeout = httpx2.Timeout(settings.token_timeout, connect=min(10.0, settings.token_timeout))
        proxy = settings.token_proxy.get_secret_value() if settings.token_proxy else None
        entra = httpx2.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            trust_env=settings.trust_env and proxy is None,
            proxy=proxy,
            verify=token_tls(settings, tls),
        )
        identity = httpx2.AsyncClient(
            # IMDS answers in milliseconds on a VM; 2 s to connect is already generous.
            timeout=httpx2.Timeout(settings.token_timeout, connect=2.0),
            follow_redirects=False,
            trust_env=False,
            verify=tls,
        )
        return cls(entra, identity)

    async def aclose(self) -> None:
        await self.entra.aclose()
        await self.identity.aclose()


def token_tls(settings: Settings, tls: ssl.SSLContext) -> ssl.SSLContext:
    """The TLS context for Entra calls: the shared one, or one that also trusts the token CA
    bundle (a TLS-inspecting proxy's CA, added to the system's, not replacing them)."""
    if settings.token_ca_bundle is None:
        return tls
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=settings.token_ca_bundle)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            [
                f"FOUNDRY_PROXY_TOKEN_CA_BUNDLE: {settings.token_ca_bundle} is not a PEM CA "
                f"bundle ({type(exc).__name__})"
            ]
        ) from None
    return context


def _explicit(settings: Settings) -> Settings:
    if settings.credential == "auto":
        # The App Registration kinds are resolved with the settings; managed identity and the
        # CLIs need an async probe, which selection.resolve does before this is called.
        raise ConfigError([NO_CREDENTIAL])
    return settings


def credential_from_settings(settings: Settings, clients: TokenClients) -> Credential:
    """The credential the settings describe. Raises ConfigError for unusable files."""
    settings = _explicit(settings)
    kind = settings.credential
    if kind == "managed-identity":
        from proxy.credentials.managed_identity import (
            AppServiceIdentity,
            IdentitySelector,
            ImdsIdentity,
        )

        selector = IdentitySelector(
            client_id=settings.client_id,
            object_id=settings.managed_identity_object_id,
            resource_id=settings.managed_identity_resource_id,
        )
        if settings.identity_endpoint is not None and settings.identity_header is not None:
            return AppServiceIdentity(
                settings.identity_endpoint, settings.identity_header, selector, clients.identity
            )
        return ImdsIdentity(selector, clients.identity, endpoint=settings.imds_endpoint)
    if kind in ("azure-cli", "azd"):
        from proxy.credentials.developer_cli import AzureCli, AzureDeveloperCli

        cli = AzureCli if kind == "azure-cli" else AzureDeveloperCli
        return cli(settings.tenant_id, timeout=settings.cli_timeout)
    if kind == "azure-identity":
        from proxy.credentials.azure_identity import DelegatedCredential

        return DelegatedCredential()
    assert settings.tenant_id is not None
    assert settings.client_id is not None
    return ClientCredentials(
        authority_host=settings.authority_host,
        tenant_id=settings.tenant_id,
        client_id=settings.client_id,
        auth=_client_auth(kind, settings),
        http=clients.entra,
        kind=settings.credential_kind,
    )


def _client_auth(kind: str, settings: Settings) -> ClientAuth:
    if kind == "certificate":
        from proxy.credentials.certificate import RotatingCertificateAuth

        assert settings.client_certificate_path is not None
        assert settings.client_id is not None
        password = settings.client_certificate_password
        auth = RotatingCertificateAuth(
            settings.client_certificate_path,
            password.get_secret_value() if password is not None else None,
            settings.client_id,
            algorithm=settings.certificate_algorithm,
            send_chain=settings.send_certificate_chain,
        )
        for warning in auth.certificate.warnings:
            log.warning("%s", warning)
        return auth
    if kind == "workload-identity":
        assert settings.federated_token_file is not None
        return federated_token_auth(settings.federated_token_file)
    if settings.client_secret is not None:
        return SecretAuth(settings.client_secret)
    assert settings.client_secret_file is not None  # settings guarantee one of the two
    return secret_file_auth(settings.client_secret_file)


def preflight(settings: Settings) -> None:
    """Raise ConfigError now for what credential_from_settings would refuse later."""
    settings = _explicit(settings)
    token_tls(settings, ssl.create_default_context())
    if settings.credential == "certificate":
        _client_auth("certificate", settings)
    elif settings.credential == "azure-identity":
        from proxy.credentials.azure_identity import require_azure_identity

        require_azure_identity()
