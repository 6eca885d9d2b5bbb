"""What the settings imply beyond their values: the warnings (valid, but probably wrong) and the
secret values the log redactor must know. Computed once, when the settings are resolved
(settings.py); a file's mode or content read here is not read again.
"""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

from proxy.addresses import is_loopback_host
from proxy.clouds import cloud_of_host
from proxy.settings_credentials import app_credentials_given
from proxy.settings_schema import SettingsFields
from proxy.settings_values import looks_like_secret_id


def known_secrets(fields: SettingsFields, keys: tuple[str, ...]) -> tuple[str, ...]:
    """The secrets of the settings and the inbound keys, for the log redactor."""
    secrets = [
        s.get_secret_value()
        for s in (fields.client_secret, fields.client_certificate_password, fields.identity_header)
        if s is not None
    ]
    if fields.token_proxy is not None:
        secrets.append(urlsplit(fields.token_proxy.get_secret_value()).password or "")
    if fields.client_secret_file is not None:
        # Read here for the redactor only; the credential reads it again at every token
        # request, so that a rotated secret is picked up.
        with contextlib.suppress(OSError, UnicodeDecodeError):
            secrets.append(fields.client_secret_file.read_text(encoding="utf-8").strip())
    return tuple(s for s in (*secrets, *keys) if s)


def probable_mistakes(fields: SettingsFields) -> list[str]:
    """Things that are valid but probably wrong."""
    out = []
    secret = fields.client_secret.get_secret_value() if fields.client_secret else ""
    if looks_like_secret_id(secret):
        out.append(
            "AZURE_CLIENT_SECRET looks like a GUID: that is usually the secret's ID; "
            "the proxy needs the secret's Value (shown once, when the secret is created)"
        )
    if fields.credential not in ("auto", "secret", "certificate", "workload-identity"):
        ignored = app_credentials_given(fields)
        if ignored:
            out.append(
                f"{', '.join(ignored)} set but not used: FOUNDRY_PROXY_CREDENTIAL is "
                f"{fields.credential}"
            )
    # Each origin of the list; a backends file's are its own (docs/backends.md).
    for upstream in filter(None, fields.upstream.split(",")):
        host = (urlsplit(upstream).hostname or "").lower()
        cloud = cloud_of_host(host)
        if cloud is not None and cloud != fields.cloud:
            out.append(
                f"FOUNDRY_PROXY_UPSTREAM is a {cloud} cloud host but FOUNDRY_PROXY_CLOUD is "
                f"{fields.cloud}: set FOUNDRY_PROXY_CLOUD={cloud} so the login host and scope "
                "match"
            )
        elif cloud is None and not is_loopback_host(host):
            out.append(
                f"FOUNDRY_PROXY_UPSTREAM {host} is not a usual Azure OpenAI / Foundry host of "
                f"the {fields.cloud} cloud: fine for a private endpoint or custom domain, "
                "otherwise check it"
            )
    return out + _exposed_secret_files(fields)


def _exposed_secret_files(fields: SettingsFields) -> list[str]:
    """Secret files every local user can read (docs/security.md). A warning, not an error:
    Kubernetes mounts Secrets 0644 unless told otherwise, and inside a pod that may be
    acceptable; on a shared machine it is not."""
    out = []
    for path, name in (
        (fields.client_secret_file, "AZURE_CLIENT_SECRET_FILE"),
        (fields.client_certificate_path, "AZURE_CLIENT_CERTIFICATE_PATH"),
        (fields.api_keys_file, "FOUNDRY_PROXY_API_KEYS_FILE"),
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
