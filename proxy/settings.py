"""Settings: one frozen object, validated once, the only reader of the environment.

Every setting comes from the environment or an env file (the environment wins). The Azure ones
keep the names azure-identity uses, so an existing deployment's variables work unchanged; the
proxy's own carry the ``FOUNDRY_PROXY_`` prefix. ``load_settings`` reports every problem at
once and never echoes a value (pydantic-settings would otherwise print the secret it was given:
pydantic/pydantic-settings#256).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from proxy.addresses import is_loopback_host
from proxy.errors import ConfigError
from proxy.policy import DEFAULT_RULES, OPEN_RULES, Rule, parse_rules

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
AI_PROJECTS_SCOPE = "https://ai.azure.com/.default"
PUBLIC_AUTHORITY = "https://login.microsoftonline.com"
IMDS_ENDPOINT = "http://169.254.169.254"
PREFIX = "FOUNDRY_PROXY_"

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
CloudName = Literal["public", "usgov", "china"]


@dataclass(frozen=True, slots=True)
class Cloud:
    """What changes together between Azure clouds (azure-protocols.md section 1, "Clouds")."""

    authority_host: str
    scope: str
    projects_scope: str
    #: Host suffixes of Azure OpenAI / Foundry endpoints in this cloud (a hint, not a rule:
    #: private endpoints and custom domains differ).
    upstream_suffixes: tuple[str, ...]


# The US Gov and China scopes follow the public cloud's pattern with the cloud's DNS suffix;
# Microsoft documents the US Gov Azure OpenAI host (azure-ai-docs azure-government.md) but not
# every scope, so each stays overridable (FOUNDRY_PROXY_SCOPE, FOUNDRY_PROXY_PROJECTS_SCOPE).
CLOUDS: MappingProxyType[str, Cloud] = MappingProxyType(
    {
        "public": Cloud(
            PUBLIC_AUTHORITY,
            COGNITIVE_SERVICES_SCOPE,
            AI_PROJECTS_SCOPE,
            (
                ".openai.azure.com",
                ".services.ai.azure.com",
                ".cognitiveservices.azure.com",
                ".inference.ml.azure.com",
            ),
        ),
        "usgov": Cloud(
            "https://login.microsoftonline.us",
            "https://cognitiveservices.azure.us/.default",
            "https://ai.azure.us/.default",
            (".openai.azure.us", ".services.ai.azure.us", ".cognitiveservices.azure.us"),
        ),
        "china": Cloud(
            "https://login.chinacloudapi.cn",
            "https://cognitiveservices.azure.cn/.default",
            "https://ai.azure.cn/.default",
            (".openai.azure.cn", ".services.ai.azure.cn", ".cognitiveservices.azure.cn"),
        ),
    }
)

_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]{2,63}$"
)
# Multi-tenant aliases cannot mint app-only tokens: client credentials need one real tenant.
_TENANT_ALIASES = frozenset({"common", "organizations", "consumers"})


def _origin(value: str, name: str, *, allow_path: bool) -> str:
    """Validate an absolute http(s) URL and return it without a trailing slash.

    https is required except for loopback hosts (local emulators and tests); userinfo, query
    and fragment are refused so the string used is exactly the string checked.
    """
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"must be an absolute https:// URL such as https://{name}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain a user name or password")
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query string or fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError("has an invalid port") from exc
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError("must use https:// (plain http is allowed only for loopback hosts)")
    path = parts.path.rstrip("/")
    if path and not allow_path:
        raise ValueError(
            f"must be the resource origin only, without the path {path!r} "
            "(for example https://myresource.openai.azure.com)"
        )
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{path}"


def _scope(value: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("https", "api") or not value.endswith("/.default") or " " in value:
        raise ValueError(
            f"must be one resource followed by /.default, for example {COGNITIVE_SERVICES_SCOPE}"
        )
    return value


def _env(name: str) -> Any:
    """Field metadata binding a setting to exactly one environment variable name."""
    return Field(validation_alias=AliasChoices(name))


class Settings(BaseSettings):
    """Everything foundry-proxy is told from outside. Build once; never mutated."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
        validate_default=True,
    )

    upstream: Annotated[str, _env("FOUNDRY_PROXY_UPSTREAM")]
    credential: Annotated[CredentialChoice, _env("FOUNDRY_PROXY_CREDENTIAL")] = "auto"
    cloud: Annotated[CloudName, _env("FOUNDRY_PROXY_CLOUD")] = "public"
    # Needed by the App Registration kinds (secret, certificate, workload identity); for a
    # managed identity AZURE_CLIENT_ID names a user-assigned identity, as in azure-identity.
    tenant_id: Annotated[str | None, _env("AZURE_TENANT_ID")] = None
    client_id: Annotated[str | None, _env("AZURE_CLIENT_ID")] = None
    # At most one way for the app to prove itself (problems_beyond_fields checks that).
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
    # Empty means "the cloud's default" (filled in by _cloud_defaults).
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
    access_log: Annotated[Literal["json", "text", "off"], _env("FOUNDRY_PROXY_ACCESS_LOG")] = "json"

    def rules(self) -> tuple[list[Rule], list[Rule]]:
        """The policy's allow and deny rules (validated at load time)."""
        base = OPEN_RULES if self.policy == "open" else DEFAULT_RULES
        return parse_rules(",".join(base)) + parse_rules(self.allow), parse_rules(self.deny)

    def inbound_keys(self) -> list[str]:
        """The accepted inbound keys: FOUNDRY_PROXY_API_KEYS (comma-separated) and the lines
        of FOUNDRY_PROXY_API_KEYS_FILE (read at startup; '#' starts a comment)."""
        keys = []
        if self.api_keys is not None:
            keys += [k.strip() for k in self.api_keys.get_secret_value().split(",")]
        if self.api_keys_file is not None:
            text = self.api_keys_file.read_text(encoding="utf-8")
            keys += [line.split("#", 1)[0].strip() for line in text.splitlines()]
        return [k for k in keys if k]

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

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(
            o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()
        )

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, v: str) -> str:
        return _origin(v, "myresource.openai.azure.com", allow_path=False)

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
        return _origin(v, "login.microsoftonline.com", allow_path=False)

    @field_validator("tenant_id")
    @classmethod
    def _check_tenant(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if v.lower() in _TENANT_ALIASES:
            raise ValueError(
                f"{v!r} cannot issue app tokens: use your tenant's ID (a GUID) "
                "or its domain such as contoso.onmicrosoft.com"
            )
        if not (_GUID.match(v) or _DOMAIN.match(v)):
            raise ValueError(
                "must be a tenant ID (a GUID) or a domain like contoso.onmicrosoft.com"
            )
        return v

    @field_validator("client_id")
    @classmethod
    def _check_client_id(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not _GUID.match(v):
            raise ValueError("must be the App Registration's Application (client) ID, a GUID")
        return v

    @field_validator("managed_identity_object_id")
    @classmethod
    def _check_object_id(cls, v: str | None) -> str | None:
        if v is not None and not _GUID.match(v.strip()):
            raise ValueError("must be the managed identity's object (principal) ID, a GUID")
        return v.strip() if v else None

    @field_validator("managed_identity_resource_id")
    @classmethod
    def _check_resource_id(cls, v: str | None) -> str | None:
        if v is not None and not v.strip().lower().startswith("/subscriptions/"):
            raise ValueError(
                "must be an Azure resource ID: /subscriptions/<id>/resourceGroups/<group>/"
                "providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>"
            )
        return v.strip() if v else None

    @field_validator("identity_endpoint", "imds_endpoint")
    @classmethod
    def _check_identity_endpoint(cls, v: str | None) -> str | None:
        # Managed identity endpoints are plain http on a local or link-local address by design
        # (the platform's own agent), so http is allowed here whatever the host.
        if v is None:
            return v
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// URL")
        return v.strip().rstrip("/")

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
    )
    @classmethod
    def _check_file(cls, v: Path | None) -> Path | None:
        # Read again at every token request (rotated secrets, projected tokens); here only
        # checked to be there, so a typo fails at startup rather than at the first refresh.
        if v is not None and not v.is_file():
            raise ValueError(f"{v} does not exist or is not a file")
        return v

    @property
    def credential_kind(self) -> str:
        """The credential in use, for logs and errors (the choice once auto is resolved)."""
        kind: str = self.credential
        if kind == "auto" and (given := self.app_credentials_given()):
            kind = APP_KIND[given[0]]
        if kind == "secret":
            return "client secret" if self.client_secret is not None else "client secret file"
        if kind == "managed-identity":
            where = "App Service" if self.identity_endpoint else "IMDS"
            return f"managed identity ({where})"
        return KIND_NAMES[kind]

    @field_validator("scope", "projects_scope")
    @classmethod
    def _check_scope(cls, v: str) -> str:
        return _scope(v) if v.strip() else ""

    @model_validator(mode="after")
    def _cloud_defaults(self) -> Settings:
        # The cloud fills in what was not set explicitly. The model is frozen, so the defaults
        # are written once here, during validation, through object.__setattr__.
        cloud = CLOUDS[self.cloud]
        for name in ("authority_host", "scope", "projects_scope"):
            if not getattr(self, name):
                object.__setattr__(self, name, getattr(cloud, name))
        return self

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

    def app_credentials_given(self) -> list[str]:
        """The App Registration credential settings present (their names, never values)."""
        return [env for field, env in CREDENTIAL_SETTINGS.items() if getattr(self, field)]

    def _credential_problems(self) -> list[str]:
        given = self.app_credentials_given()
        kind: str = self.credential
        if kind == "auto" and len(given) > 1:
            return [
                f"{' and '.join(given)}: set only one way for the app to prove its identity "
                "(or choose one with FOUNDRY_PROXY_CREDENTIAL)"
            ]
        if kind == "auto" and given:
            kind = APP_KIND[given[0]]
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
                if getattr(self, field) is None:
                    problems.append(f"{env}: is required for FOUNDRY_PROXY_CREDENTIAL={kind}")
            return problems
        return self.managed_identity_problems() if kind == "managed-identity" else []

    @property
    def other_identity_platform(self) -> str | None:
        """Azure Arc or Service Fabric, whose identity endpoints look like App Service's but
        speak another protocol (azure-protocols.md section 2)."""
        if self.identity_server_thumbprint:
            return "Service Fabric"
        if self.arc_imds_endpoint:
            return "Azure Arc"
        return None

    def managed_identity_problems(self) -> list[str]:
        """What stops a managed identity from working with these settings (checked when that
        kind is chosen, explicitly or by auto-detection)."""
        problems = []
        if platform := self.other_identity_platform:
            problems.append(
                f"IDENTITY_ENDPOINT: this is {platform}, whose managed identity foundry-proxy "
                "reaches through azure-identity: set FOUNDRY_PROXY_CREDENTIAL=azure-identity"
            )
        elif (self.identity_endpoint is None) != (self.identity_header is None):
            problems.append(
                "IDENTITY_ENDPOINT and IDENTITY_HEADER: set both (App Service and Container Apps "
                "inject them together) or neither"
            )
        selectors = [
            env
            for value, env in (
                (self.client_id, "AZURE_CLIENT_ID"),
                (self.managed_identity_object_id, "FOUNDRY_PROXY_MANAGED_IDENTITY_OBJECT_ID"),
                (self.managed_identity_resource_id, "FOUNDRY_PROXY_MANAGED_IDENTITY_RESOURCE_ID"),
            )
            if value
        ]
        if len(selectors) > 1:
            problems.append(
                f"{' and '.join(selectors)}: name a user-assigned identity in one way only"
            )
        return problems

    def problems_beyond_fields(self) -> list[str]:
        """Cross-field rules: the credential's settings, bind policy."""
        problems = self._credential_problems()
        try:
            keys = self.inbound_keys()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"FOUNDRY_PROXY_API_KEYS_FILE: cannot be read ({type(exc).__name__})")
            keys = ["unreadable"]
        if self.max_concurrency > self.pool_size:
            problems.append(
                "FOUNDRY_PROXY_MAX_CONCURRENCY: must not exceed FOUNDRY_PROXY_POOL_SIZE, or "
                "requests would queue for an upstream connection without a time limit"
            )
        if self.api_keys_file is not None and not keys:
            problems.append("FOUNDRY_PROXY_API_KEYS_FILE: holds no key")
        if not is_loopback_host(self.host) and not keys and not self.allow_remote:
            problems.append(
                f"FOUNDRY_PROXY_HOST: {self.host!r} is not a loopback address; anyone who can "
                "reach it can spend this identity's quota. Bind 127.0.0.1, or require inbound "
                "keys (FOUNDRY_PROXY_API_KEYS or FOUNDRY_PROXY_API_KEYS_FILE), or set "
                "FOUNDRY_PROXY_ALLOW_REMOTE=true (--allow-remote) if the network is trusted"
            )
        return problems

    def known_secrets(self) -> list[str]:
        """Secret values known at startup, for the log redactor (a secret file is read once
        here for that purpose; values rotated in later are caught by the redactor's patterns)."""
        secrets = [
            s.get_secret_value()
            for s in (self.client_secret, self.client_certificate_password, self.identity_header)
            if s is not None
        ]
        if self.token_proxy is not None:
            password = urlsplit(self.token_proxy.get_secret_value()).password
            if password:
                secrets.append(password)
        if self.client_secret_file is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                secrets.append(self.client_secret_file.read_text(encoding="utf-8").strip())
        with contextlib.suppress(OSError, UnicodeDecodeError):
            secrets += self.inbound_keys()
        return [s for s in secrets if s]

    def warnings(self) -> list[str]:
        """Things that are valid but probably wrong."""
        out = []
        secret = self.client_secret.get_secret_value() if self.client_secret else ""
        if _GUID.match(secret.strip()):
            out.append(
                "AZURE_CLIENT_SECRET looks like a GUID: that is usually the secret's ID; "
                "the proxy needs the secret's Value (shown once, when the secret is created)"
            )
        if self.credential not in ("auto", *APP_KIND.values()):
            ignored = self.app_credentials_given()
            if ignored:
                out.append(
                    f"{', '.join(ignored)} set but not used: FOUNDRY_PROXY_CREDENTIAL is "
                    f"{self.credential}"
                )
        out += self._cloud_warnings()
        out += self._exposed_secret_files()
        return out

    def _exposed_secret_files(self) -> list[str]:
        """Secret files every local user can read (test-plan D38). A warning, not an error:
        Kubernetes mounts Secrets 0644 unless told otherwise, and inside a pod that may be
        acceptable; on a shared machine it is not."""
        out = []
        for path, name in (
            (self.client_secret_file, "AZURE_CLIENT_SECRET_FILE"),
            (self.client_certificate_path, "AZURE_CLIENT_CERTIFICATE_PATH"),
            (self.api_keys_file, "FOUNDRY_PROXY_API_KEYS_FILE"),
        ):
            try:
                mode = path.stat().st_mode if path is not None else 0
            except OSError:
                continue
            if mode & 0o004:
                out.append(
                    f"{name} ({path}) can be read by every user of this machine: chmod 600 it "
                    "(in Kubernetes, defaultMode: 0400 on the Secret volume)"
                )
        return out

    def _cloud_warnings(self) -> list[str]:
        host = (urlsplit(self.upstream).hostname or "").lower()
        if is_loopback_host(host) or host.endswith(CLOUDS[self.cloud].upstream_suffixes):
            return []
        for name, cloud in CLOUDS.items():
            if host.endswith(cloud.upstream_suffixes):
                return [
                    f"FOUNDRY_PROXY_UPSTREAM is a {name} cloud host but FOUNDRY_PROXY_CLOUD is "
                    f"{self.cloud}: set FOUNDRY_PROXY_CLOUD={name} so the login host and scope "
                    "match"
                ]
        return [
            f"FOUNDRY_PROXY_UPSTREAM {host} is not a usual Azure OpenAI / Foundry host of the "
            f"{self.cloud} cloud: fine for a private endpoint or custom domain, otherwise check it"
        ]


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


def _credential_given(file_values: dict[str, str | None], overrides: dict[str, Any]) -> bool:
    """Whether any credential setting is present, read straight from the sources (used when
    the settings as a whole did not validate, so every problem is still reported at once)."""
    environment = {k.upper() for k, v in os.environ.items() if v}
    fields = {**CREDENTIAL_SETTINGS, "credential": "FOUNDRY_PROXY_CREDENTIAL"}
    fields |= {"identity_endpoint": "IDENTITY_ENDPOINT"}
    return any(
        overrides.get(field) is not None or env in environment or file_values.get(env)
        for field, env in fields.items()
    )


def env_names() -> dict[str, str]:
    """Field name -> environment variable name."""
    names = {}
    for name, f in Settings.model_fields.items():
        assert isinstance(f.validation_alias, AliasChoices)
        names[name] = str(f.validation_alias.choices[0])
    return names


def _describe(error: Any, names: dict[str, str]) -> str:
    loc = error.get("loc") or ("",)
    key = str(loc[0])
    name = names.get(key, key)
    if error.get("type") == "missing":
        return f"{name}: is required"
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    return f"{name}: {message}"


def _unknown_keys(keys: list[str], known: set[str], where: str) -> list[str]:
    problems = []
    for key in keys:
        if key.upper().startswith(PREFIX) and key.upper() not in known:
            close = difflib.get_close_matches(key.upper(), sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{key}: unknown setting in {where}{hint}")
    return problems


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from the environment, an optional env file and explicit overrides.

    Raises ConfigError listing every problem; no value appears in the message.
    """
    names = env_names()
    problems: list[str] = []
    file_values: dict[str, str | None] = {}
    if env_file is not None:
        if not env_file.is_file():
            raise ConfigError([f"--env-file: {env_file} does not exist or is not a file"])
        file_values = {k.upper(): v for k, v in dotenv_values(env_file).items() if k}
        problems += _unknown_keys(list(file_values), set(names.values()), str(env_file))
    try:
        settings = Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        problems += [_describe(e, names) for e in exc.errors(include_input=False)]
        if not _credential_given(file_values, overrides):
            problems.append(NO_CREDENTIAL)
        raise ConfigError(problems) from None
    problems += settings.problems_beyond_fields()
    if problems:
        raise ConfigError(problems)
    return settings


def environment_proxy_variables() -> list[str]:
    """Names of proxy variables set in the environment (values are never read out)."""
    names = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    return [n for n in names if os.environ.get(n)]
