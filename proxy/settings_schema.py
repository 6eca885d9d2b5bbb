"""The settings schema: every setting's name, type, default and per-field validation.

What the operator wrote, checked value by value; nothing here reads a file's content, looks at
another field or derives a value. Cross-field rules, files read and derived values belong to the
resolution (settings.py), which builds the one runtime object the proxy runs on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from proxy.backend_config import upstream_origins
from proxy.clouds import CloudName
from proxy.policy import parse_rules
from proxy.settings_values import guid, local_endpoint, origin, resource_id, scope, tenant

IMDS_ENDPOINT = "http://169.254.169.254"

CredentialChoice = Literal[
    "auto",
    "secret",
    "certificate",
    "workload-identity",
    "managed-identity",
    "azure-cli",
    "azd",
    "azure-identity",
]


def _env(name: str) -> Any:
    """Field metadata binding a setting to exactly one environment variable name."""
    return Field(validation_alias=AliasChoices(name))


class SettingsFields(BaseModel):
    """Everything foundry-proxy is told from outside, each value valid on its own."""

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
        validate_default=True,
    )

    # One origin, or several comma-separated in priority order; required unless the backends
    # file describes the pool (docs/backends.md).
    upstream: Annotated[str, _env("FOUNDRY_PROXY_UPSTREAM")] = ""
    backends_file: Annotated[Path | None, _env("FOUNDRY_PROXY_BACKENDS_FILE")] = None
    credential: Annotated[CredentialChoice, _env("FOUNDRY_PROXY_CREDENTIAL")] = "auto"
    cloud: Annotated[CloudName, _env("FOUNDRY_PROXY_CLOUD")] = "public"
    # Needed by the App Registration kinds (secret, certificate, workload identity); for a
    # managed identity AZURE_CLIENT_ID names a user-assigned identity, as in azure-identity.
    tenant_id: Annotated[str | None, _env("AZURE_TENANT_ID")] = None
    client_id: Annotated[str | None, _env("AZURE_CLIENT_ID")] = None
    # At most one way for the app to prove itself (settings_credentials.py checks that).
    client_secret: Annotated[SecretStr | None, _env("AZURE_CLIENT_SECRET")] = None
    client_secret_file: Annotated[Path | None, _env("AZURE_CLIENT_SECRET_FILE")] = None
    client_certificate_path: Annotated[Path | None, _env("AZURE_CLIENT_CERTIFICATE_PATH")] = None
    client_certificate_password: Annotated[
        SecretStr | None, _env("AZURE_CLIENT_CERTIFICATE_PASSWORD")
    ] = None
    send_certificate_chain: Annotated[bool, _env("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN")] = False
    certificate_algorithm: Annotated[
        Literal["PS256", "RS256"], _env("FOUNDRY_PROXY_CERTIFICATE_ALGORITHM")
    ] = "PS256"
    federated_token_file: Annotated[Path | None, _env("AZURE_FEDERATED_TOKEN_FILE")] = None
    # App Service, Functions and Container Apps inject these two for their managed identity.
    identity_endpoint: Annotated[str | None, _env("IDENTITY_ENDPOINT")] = None
    identity_header: Annotated[SecretStr | None, _env("IDENTITY_HEADER")] = None
    imds_endpoint: Annotated[str, _env("FOUNDRY_PROXY_IMDS_ENDPOINT")] = IMDS_ENDPOINT
    managed_identity_object_id: Annotated[
        str | None, _env("FOUNDRY_PROXY_MANAGED_IDENTITY_OBJECT_ID")
    ] = None
    managed_identity_resource_id: Annotated[
        str | None, _env("FOUNDRY_PROXY_MANAGED_IDENTITY_RESOURCE_ID")
    ] = None
    cli_timeout: Annotated[float, _env("FOUNDRY_PROXY_CLI_TIMEOUT"), Field(gt=0)] = 10.0
    # Empty means "the cloud's default" (filled in when the settings are resolved).
    authority_host: Annotated[str, _env("AZURE_AUTHORITY_HOST")] = ""
    scope: Annotated[str, _env("FOUNDRY_PROXY_SCOPE")] = ""
    projects_scope: Annotated[str, _env("FOUNDRY_PROXY_PROJECTS_SCOPE")] = ""
    # Token traffic only (Entra): its own egress proxy and extra CA, apart from the inference
    # traffic's, because corporate networks often inspect one and not the other.
    token_proxy: Annotated[SecretStr | None, _env("FOUNDRY_PROXY_TOKEN_PROXY")] = None
    # Set by platforms whose managed identity foundry-proxy reaches only through
    # azure-identity; read so that auto-detection does not mistake them for App Service.
    arc_imds_endpoint: Annotated[str | None, _env("IMDS_ENDPOINT")] = None
    identity_server_thumbprint: Annotated[str | None, _env("IDENTITY_SERVER_THUMBPRINT")] = None
    token_ca_bundle: Annotated[Path | None, _env("FOUNDRY_PROXY_TOKEN_CA_BUNDLE")] = None

    host: Annotated[str, _env("FOUNDRY_PROXY_HOST")] = "127.0.0.1"
    port: Annotated[int, _env("FOUNDRY_PROXY_PORT"), Field(ge=0, le=65535)] = 8787
    allow_remote: Annotated[bool, _env("FOUNDRY_PROXY_ALLOW_REMOTE")] = False
    workers: Annotated[int, _env("FOUNDRY_PROXY_WORKERS"), Field(ge=1, le=64)] = 1
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], _env("FOUNDRY_PROXY_LOG_LEVEL")
    ] = "info"

    connect_timeout: Annotated[float, _env("FOUNDRY_PROXY_CONNECT_TIMEOUT"), Field(gt=0)] = 10.0
    read_timeout: Annotated[float, _env("FOUNDRY_PROXY_READ_TIMEOUT"), Field(gt=0)] = 600.0
    token_timeout: Annotated[float, _env("FOUNDRY_PROXY_TOKEN_TIMEOUT"), Field(gt=0)] = 30.0
    token_wait: Annotated[float, _env("FOUNDRY_PROXY_TOKEN_WAIT"), Field(ge=0)] = 10.0
    pool_size: Annotated[int, _env("FOUNDRY_PROXY_POOL_SIZE"), Field(ge=1)] = 1024
    replay_body_limit: Annotated[int, _env("FOUNDRY_PROXY_REPLAY_BODY_LIMIT"), Field(ge=0)] = (
        256 * 1024
    )
    # Azure's largest uploads (files for batches and fine-tuning) are up to 512 MB.
    max_body_bytes: Annotated[int, _env("FOUNDRY_PROXY_MAX_BODY_BYTES"), Field(ge=1)] = 512 * 2**20
    shutdown_grace: Annotated[float, _env("FOUNDRY_PROXY_SHUTDOWN_GRACE"), Field(ge=0)] = 30.0
    trust_env: Annotated[bool, _env("FOUNDRY_PROXY_TRUST_ENV")] = False
    # Browser origins allowed to call the proxy (comma-separated); none by default, so a web
    # page can neither read answers nor spend quota through a user's proxy.
    allowed_origins: Annotated[str, _env("FOUNDRY_PROXY_ALLOWED_ORIGINS")] = ""
    # Which operations may be forwarded (policy.py): inference and reads by default.
    policy: Annotated[Literal["default", "open"], _env("FOUNDRY_PROXY_POLICY")] = "default"
    allow: Annotated[str, _env("FOUNDRY_PROXY_ALLOW")] = ""
    deny: Annotated[str, _env("FOUNDRY_PROXY_DENY")] = ""
    # Inbound keys: when set, every proxied request must carry one (Authorization: Bearer or
    # api-key); they are compared in constant time and never forwarded.
    api_keys: Annotated[SecretStr | None, _env("FOUNDRY_PROXY_API_KEYS")] = None
    api_keys_file: Annotated[Path | None, _env("FOUNDRY_PROXY_API_KEYS_FILE")] = None
    # In-flight requests at most; more wait up to queue_timeout, then get 503. Keeps the
    # upstream pool from being exhausted (aiohttp would queue for a connection without limit).
    max_concurrency: Annotated[int, _env("FOUNDRY_PROXY_MAX_CONCURRENCY"), Field(ge=1)] = 1024
    queue_timeout: Annotated[float, _env("FOUNDRY_PROXY_QUEUE_TIMEOUT"), Field(ge=0)] = 10.0
    # Slowloris: the whole request head must arrive within this many seconds.
    head_timeout: Annotated[float, _env("FOUNDRY_PROXY_HEAD_TIMEOUT"), Field(gt=0)] = 10.0
    max_header_bytes: Annotated[
        int, _env("FOUNDRY_PROXY_MAX_HEADER_BYTES"), Field(ge=1024, le=1024 * 1024)
    ] = 64 * 1024
    # Resource bounds of the listener (docs/security.md, "Resource bounds"). Connections at
    # most (more are answered 503 and closed): 1,000 streams plus idle keep-alive connections.
    max_connections: Annotated[
        int, _env("FOUNDRY_PROXY_MAX_CONNECTIONS"), Field(ge=1, le=1_000_000)
    ] = 2048
    # Pipelined requests parsed ahead of the one being answered; past that, reading waits.
    max_pipelined: Annotated[int, _env("FOUNDRY_PROXY_MAX_PIPELINED"), Field(ge=1, le=1024)] = 8
    # A request body must bring at least body_min_rate bytes/s over each body_timeout window.
    body_timeout: Annotated[float, _env("FOUNDRY_PROXY_BODY_TIMEOUT"), Field(gt=0, le=3600)] = 20.0
    body_min_rate: Annotated[int, _env("FOUNDRY_PROXY_BODY_MIN_RATE"), Field(ge=0)] = 500
    # An answer the client takes nothing of for this long is abandoned (its slot freed).
    send_timeout: Annotated[float, _env("FOUNDRY_PROXY_SEND_TIMEOUT"), Field(gt=0, le=3600)] = 30.0
    # Request-body bytes all requests together may hold in memory beyond each one's first
    # 16 KiB (budget.py); a request needing more gets 503. 64 MiB: with ~100 MB for 1,000
    # streams and 32 MiB of free parts at 2048 connections, the process stays inside 256Mi.
    max_buffered_body_bytes: Annotated[
        int, _env("FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES"), Field(ge=0)
    ] = 64 * 2**20
    # A Unix domain socket to listen on as well (mode 0600): pod-local callers on a shared
    # volume, unreachable from the network and from other users.
    uds: Annotated[Path | None, _env("FOUNDRY_PROXY_UDS")] = None
    # Largest Realtime WebSocket message, either way (a larger one closes with 1009).
    ws_max_message_bytes: Annotated[
        int, _env("FOUNDRY_PROXY_WS_MAX_MESSAGE_BYTES"), Field(ge=1024)
    ] = 16 * 1024 * 1024
    # /metrics in Prometheus text format, and the access log on stdout.
    metrics: Annotated[bool, _env("FOUNDRY_PROXY_METRICS")] = True
    # Models and deployments with a label of their own in /metrics; others count as "other".
    metrics_max_models: Annotated[
        int, _env("FOUNDRY_PROXY_METRICS_MAX_MODELS"), Field(ge=0, le=10_000)
    ] = 100
    access_log: Annotated[Literal["json", "text", "off"], _env("FOUNDRY_PROXY_ACCESS_LOG")] = "json"

    @field_validator("allow", "deny")
    @classmethod
    def _check_rules(cls, v: str) -> str:
        parse_rules(v)
        return v

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        keys = [k.strip() for k in v.get_secret_value().split(",") if k.strip()]
        if not keys:
            raise ValueError("is empty")
        if any(len(k) < 16 for k in keys):
            raise ValueError("each key must be at least 16 characters (use a random string)")
        return v

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, v: str) -> str:
        # Each origin by the one rule a single upstream has (settings_values.origin).
        return ",".join(upstream_origins(v)) if v.strip() else ""

    @field_validator("authority_host")
    @classmethod
    def _check_authority(cls, v: str) -> str:
        # The AKS workload identity webhook injects this with or without a scheme and with a
        # trailing slash; azure-identity accepts both forms, so do we.
        v = v.strip()
        if not v:
            return v
        if "://" not in v:
            v = "https://" + v
        return origin(v, "login.microsoftonline.com", allow_path=False)

    @field_validator("tenant_id")
    @classmethod
    def _check_tenant(cls, v: str | None) -> str | None:
        return None if v is None else tenant(v)

    @field_validator("client_id")
    @classmethod
    def _check_client_id(cls, v: str | None) -> str | None:
        return None if v is None else guid(v, "the App Registration's Application (client) ID")

    @field_validator("managed_identity_object_id")
    @classmethod
    def _check_object_id(cls, v: str | None) -> str | None:
        return None if v is None else guid(v, "the managed identity's object (principal) ID")

    @field_validator("managed_identity_resource_id")
    @classmethod
    def _check_resource_id(cls, v: str | None) -> str | None:
        return None if v is None else resource_id(v)

    @field_validator("identity_endpoint", "imds_endpoint")
    @classmethod
    def _check_identity_endpoint(cls, v: str | None) -> str | None:
        return None if v is None else local_endpoint(v)

    @field_validator("token_proxy")
    @classmethod
    def _check_token_proxy(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        parts = urlsplit(v.get_secret_value().strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be a proxy URL such as http://proxy.example.com:3128")
        return v

    @field_validator("client_secret")
    @classmethod
    def _check_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("is empty")
        return v

    @field_validator(
        "client_secret_file",
        "federated_token_file",
        "client_certificate_path",
        "token_ca_bundle",
        "api_keys_file",
        "backends_file",
    )
    @classmethod
    def _check_file(cls, v: Path | None) -> Path | None:
        # Read again at every token request (rotated secrets, projected tokens); here only
        # checked to be there, so a typo fails at startup rather than at the first refresh.
        if v is not None and not v.is_file():
            raise ValueError(f"{v} does not exist or is not a file")
        return v

    @field_validator("scope", "projects_scope")
    @classmethod
    def _check_scope(cls, v: str) -> str:
        return scope(v) if v.strip() else ""

    @field_validator("host")
    @classmethod
    def _check_host(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("is empty")
        return v

    @field_validator("port", mode="before")
    @classmethod
    def _check_port(cls, v: object) -> object:
        # Kubernetes "service links" inject FOUNDRY_PROXY_PORT=tcp://10.0.0.1:8787 into every
        # pod of a namespace holding a Service named foundry-proxy.
        if isinstance(v, str) and "://" in v:
            raise ValueError(
                "looks like a Kubernetes service link (set enableServiceLinks: false on the "
                "pod, or set FOUNDRY_PROXY_PORT explicitly)"
            )
        return v


class SettingsSource(SettingsFields, BaseSettings):
    """The fields read from the environment and an env file (the environment wins); the only
    class that reads them. pydantic-settings would echo a rejected value in its errors
    (pydantic/pydantic-settings#256): hide_input_in_errors keeps secrets out."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
        validate_default=True,
    )
