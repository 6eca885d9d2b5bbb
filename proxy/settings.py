"""Settings: read once, validated once, resolved once into the object the proxy runs on.

Every setting comes from the environment or an env file (the environment wins). The Azure ones
keep the names azure-identity uses, so an existing deployment's variables work unchanged; the
proxy's own carry the ``FOUNDRY_PROXY_`` prefix (docs/settings.md).

``load_settings`` reads the sources through the schema (settings_schema.py: each value on its
own), then resolves: the cloud's defaults, the credential kind the settings name, the inbound
keys file read, the policy rules parsed, the cross-field rules and the warnings. The result,
``Settings``, is immutable and holds every derived value, so nothing downstream reads a file or
parses a rule again. Every problem is reported at once, and never with a value: a rejected
value may be a secret.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, ValidationError, model_validator

from proxy.addresses import is_loopback_host
from proxy.backend_config import PoolSpec, pool_from_file, pool_from_upstream
from proxy.clouds import CLOUDS
from proxy.errors import ConfigError
from proxy.policy import DEFAULT_RULES, OPEN_RULES, Rule, parse_rules
from proxy.settings_credentials import (
    CREDENTIAL_SETTINGS,
    NO_CREDENTIAL,
    app_credentials_given,
    credential_problems,
    kind_name,
    managed_identity_problems,
    other_identity_platform,
    resolved_kind,
)
from proxy.settings_names import env_file_problems, environment_warnings
from proxy.settings_notices import known_secrets, probable_mistakes
from proxy.settings_placeholders import placeholder_problems
from proxy.settings_schema import CredentialChoice, SettingsFields, SettingsSource
from proxy.settings_values import BACKENDS_FILE, UPSTREAM


class SettingsError(ConfigError):
    """Invalid settings; ``placeholders`` lists the problems that are config.example.env's
    placeholders left in place (also in ``problems``), which `check` reports on their own."""

    def __init__(self, problems: list[str], placeholders: list[str]) -> None:
        super().__init__(problems)
        self.placeholders = placeholders


def _hidden() -> Any:
    """A derived value that may hold secrets: kept out of repr() and model_dump()."""
    return Field(repr=False, exclude=True)


class Settings(SettingsFields):
    """The resolved runtime configuration, built once by ``load_settings``; never mutated.

    The fields are the schema's, resolved: ``authority_host`` and the scopes hold the cloud's
    values when not set, ``credential`` names the App Registration kind configured (``auto``
    only when the platform must decide). The derived values follow.
    """

    origins: frozenset[str]
    #: The backends requests go to (backend_config.py); ``upstream`` holds the primary's origin.
    pool: PoolSpec
    allow_rules: tuple[Rule, ...]
    deny_rules: tuple[Rule, ...]
    inbound_key_values: Annotated[tuple[str, ...], _hidden()]
    secret_values: Annotated[tuple[str, ...], _hidden()]
    #: Things that are valid but probably wrong, for the startup log and `check`.
    notices: tuple[str, ...]
    #: The environment's names that look like misspellings of ours (also in ``notices``):
    #: named again if auto-detection then finds nothing, which such a typo often causes.
    misspelt_names: tuple[str, ...]

    @model_validator(mode="after")
    def _resolved(self) -> Settings:
        if not (self.authority_host and self.scope and self.projects_scope):
            raise ValueError("the login host and scopes must be resolved")
        return self

    def rules(self) -> tuple[list[Rule], list[Rule]]:
        """The policy's allow and deny rules (parsed once, at load time)."""
        return list(self.allow_rules), list(self.deny_rules)

    def inbound_keys(self) -> list[str]:
        """The accepted inbound keys: FOUNDRY_PROXY_API_KEYS (comma-separated) and the lines of
        FOUNDRY_PROXY_API_KEYS_FILE (read once, at load time; '#' starts a comment)."""
        return list(self.inbound_key_values)

    def known_secrets(self) -> list[str]:
        """Secret values known at load time, for the log redactor (values rotated in later are
        caught by the redactor's patterns)."""
        return list(self.secret_values)

    def warnings(self) -> list[str]:
        return list(self.notices)

    @property
    def credential_kind(self) -> str:
        """The credential in use, for logs and errors."""
        return kind_name(self)

    @property
    def other_identity_platform(self) -> str | None:
        return other_identity_platform(self)

    def app_credentials_given(self) -> list[str]:
        return app_credentials_given(self)

    def managed_identity_problems(self) -> list[str]:
        return managed_identity_problems(self)

    def with_detected_credential(self, kind: CredentialChoice) -> Settings:
        """These settings with the kind auto-detection chose (credentials/selection.py), built
        and validated like any other."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        return Settings(**values | {"credential": kind})


def env_names() -> dict[str, str]:
    """Field name -> environment variable name, for every setting."""
    names = {}
    for name, f in SettingsFields.model_fields.items():
        assert isinstance(f.validation_alias, AliasChoices)
        names[name] = str(f.validation_alias.choices[0])
    return names


def _read_keys(fields: SettingsFields, problems: list[str]) -> tuple[str, ...]:
    keys = []
    if fields.api_keys is not None:
        keys += [k.strip() for k in fields.api_keys.get_secret_value().split(",")]
    if fields.api_keys_file is not None:
        try:
            text = fields.api_keys_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"FOUNDRY_PROXY_API_KEYS_FILE: cannot be read ({type(exc).__name__})")
            return ("unreadable",)
        keys += [line.split("#", 1)[0].strip() for line in text.splitlines()]
    found = tuple(k for k in keys if k)
    if fields.api_keys_file is not None and not found:
        problems.append("FOUNDRY_PROXY_API_KEYS_FILE: holds no key")
    return found


def _bind_problems(fields: SettingsFields, keys: tuple[str, ...]) -> list[str]:
    problems = []
    if fields.max_concurrency > fields.pool_size:
        problems.append(
            "FOUNDRY_PROXY_MAX_CONCURRENCY: must not exceed FOUNDRY_PROXY_POOL_SIZE, or "
            "requests would queue for an upstream connection without a time limit"
        )
    if not is_loopback_host(fields.host) and not keys and not fields.allow_remote:
        problems.append(
            f"FOUNDRY_PROXY_HOST: {fields.host!r} is not a loopback address; anyone who can "
            "reach it can spend this identity's quota. Bind 127.0.0.1, or require inbound "
            "keys (FOUNDRY_PROXY_API_KEYS or FOUNDRY_PROXY_API_KEYS_FILE), or set "
            "FOUNDRY_PROXY_ALLOW_REMOTE=true (--allow-remote) if the network is trusted"
        )
    return problems


def _resolve(fields: SettingsFields, problems: list[str], misspelt: list[str]) -> Settings | None:
    """The runtime settings for ``fields``; None, with ``problems`` extended, when a
    cross-field rule fails."""
    found = credential_problems(fields)
    keys = _read_keys(fields, found)
    found += _bind_problems(fields, keys)
    pool = _pool(fields, found)
    problems += found
    if found or pool is None:
        return None
    cloud = CLOUDS[fields.cloud]
    base = OPEN_RULES if fields.policy == "open" else DEFAULT_RULES
    values = {name: getattr(fields, name) for name in SettingsFields.model_fields}
    return Settings(
        **values
        | {
            "authority_host": fields.authority_host or cloud.authority_host,
            "scope": fields.scope or cloud.scope,
            "projects_scope": fields.projects_scope or cloud.projects_scope,
            "credential": resolved_kind(fields),
            "upstream": pool.backends[0].origin,
        },
        pool=pool,
        origins=frozenset(
            o.strip().rstrip("/") for o in fields.allowed_origins.split(",") if o.strip()
        ),
        allow_rules=(*parse_rules(",".join(base)), *parse_rules(fields.allow)),
        deny_rules=tuple(parse_rules(fields.deny)),
        inbound_key_values=keys,
        secret_values=known_secrets(fields, keys),
        notices=(*probable_mistakes(fields), *misspelt),
        misspelt_names=tuple(misspelt),
    )


def _pool(fields: SettingsFields, problems: list[str]) -> PoolSpec | None:
    """The backends: FOUNDRY_PROXY_UPSTREAM's origins, or the backends file's (one of the two)."""
    if fields.backends_file is None:
        return pool_from_upstream(fields.upstream) if fields.upstream else None
    if fields.upstream:
        problems.append(
            f"{UPSTREAM}: set either it or {BACKENDS_FILE}, not both (the backends file names "
            "every origin)"
        )
        return None
    pool, found = pool_from_file(fields.backends_file)
    problems += found
    return pool


def _no_upstream(raw: dict[str, str | None]) -> list[str]:
    if (raw.get(UPSTREAM) or "").strip() or (raw.get(BACKENDS_FILE) or "").strip():
        return []
    return [f"{UPSTREAM}: is required (or {BACKENDS_FILE} for several resources)"]


def _describe(error: Any, names: dict[str, str]) -> str:
    loc = error.get("loc") or ("",)
    key = str(loc[0])
    name = names.get(key, key)
    if error.get("type") == "missing":
        return f"{name}: is required"
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    return f"{name}: {message}"


def _raw_values(
    file_values: dict[str, str | None], overrides: dict[str, Any], names: dict[str, str]
) -> dict[str, str | None]:
    """Each setting's text as given, by variable name, before validation (the environment
    over the file, explicit overrides over both)."""
    read = set(names.values())
    raw = {k: v for k, v in file_values.items() if k in read}
    raw |= {k.upper(): v for k, v in os.environ.items() if k.upper() in read}
    raw |= {names[k]: str(v) for k, v in overrides.items() if k in names and v is not None}
    return raw


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from the environment, an optional env file and explicit overrides.

    Raises SettingsError (a ConfigError) listing every problem; no value appears in it.
    """
    names = env_names()
    read = set(names.values())
    problems: list[str] = []
    file_values: dict[str, str | None] = {}
    if env_file is not None:
        if not env_file.is_file():
            raise ConfigError([f"--env-file: {env_file} does not exist or is not a file"])
        written = {k: v for k, v in dotenv_values(env_file).items() if k}
        problems += env_file_problems(written, read, str(env_file))
        file_values = {k.upper(): v for k, v in written.items()}
    raw = _raw_values(file_values, overrides, names)
    placeholders = placeholder_problems(raw)
    misspelt = environment_warnings(os.environ, read)
    missing = _no_upstream(raw)
    problems += missing
    settings = None
    try:
        fields = SettingsSource(_env_file=env_file, **overrides)
    except ValidationError as exc:
        problems += [_describe(e, names) for e in exc.errors(include_input=False)]
        failed = True
    else:
        settings = _resolve(fields, problems, misspelt)
        failed = bool(missing)
    credential_names = {*CREDENTIAL_SETTINGS.values(), "FOUNDRY_PROXY_CREDENTIAL"}
    if failed and not credential_names.union({"IDENTITY_ENDPOINT"}) & raw.keys():
        problems.append(NO_CREDENTIAL)
    problems += placeholders
    if problems or settings is None:
        # A misspelt name in the environment is only a warning, but when the settings fail it
        # is often why ("AZURE_TENANT_ID: is required" next to AZURE_TENNANT_ID): say it here.
        raise SettingsError(problems + misspelt, placeholders)
    return settings


def environment_proxy_variables() -> list[str]:
    """Names of proxy variables set in the environment (values are never read out)."""
    names = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    return [n for n in names if os.environ.get(n)]
