"""Entra ID error answers turned into CredentialErrors an operator can act on.

Branch on ``error`` and ``error_codes``, never on the description text (Entra's own guidance:
entra-docs reference-error-codes.md). The description is kept only up to its first line: the rest
is trace and correlation IDs, which are logged separately.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from proxy.credentials.codes import TokenErrorCode
from proxy.errors import AuthenticationFailed, CredentialError, CredentialUnavailable
from proxy.redaction import safe_message

# AADSTS code -> what to do about it. The same table feeds the 503 bodies and the logs.
HINTS: Mapping[int, str] = MappingProxyType(
    {
        7000215: "AZURE_CLIENT_SECRET is not a valid secret for this app: use the secret's Value, "
        "not its Secret ID (Certificates & secrets in the App Registration)",
        7000222: "the client secret has expired: create a new one in the App Registration and "
        "update AZURE_CLIENT_SECRET",
        7000218: "no client secret was sent: set AZURE_CLIENT_SECRET",
        700016: "the application (AZURE_CLIENT_ID) was not found in tenant AZURE_TENANT_ID: check "
        "both values, or wait a minute if the App Registration is brand new",
        7000112: "the application is disabled in this tenant",
        90002: "tenant AZURE_TENANT_ID was not found: check the tenant ID or domain",
        90038: "the tenant belongs to another national cloud: set AZURE_AUTHORITY_HOST to that "
        "cloud's login host",
        70011: "the scope is invalid: FOUNDRY_PROXY_SCOPE must be one resource followed by "
        "/.default",
        700022: "the scope names more than one resource: use exactly one .../.default",
        500011: "the resource in FOUNDRY_PROXY_SCOPE does not exist in this tenant or cloud",
        53003: "Conditional Access blocked the token: ask your Entra admin to exclude this "
        "workload identity or to allow its location",
        90055: "Entra is throttling this tenant: the proxy will retry later",
        50012: "this certificate is not registered on the app: upload the public certificate of "
        "AZURE_CLIENT_CERTIFICATE_PATH under Certificates & secrets > Certificates, and check "
        "AZURE_CLIENT_ID",
        700027: "the assertion's signature did not verify: the key in "
        "AZURE_CLIENT_CERTIFICATE_PATH does not belong to the certificate registered on the app",
        700030: "the certificate's subject is not one the app trusts for subject name + issuer "
        "authentication (trustedCertificateSubjects in the app manifest)",
        700024: "the client assertion is outside its validity window: check this machine's "
        "clock (NTP)",
        700021: "the assertion names another application than AZURE_CLIENT_ID",
        **dict.fromkeys(
            (70021, 700211, 700213, 7002138),
            "no federated credential on the app matches this service account token: check the "
            "issuer (the cluster's OIDC issuer URL), the subject "
            "system:serviceaccount:<namespace>:<name> (case-sensitive) and the audience "
            "api://AzureADTokenExchange",
        ),
    }
)

# Errors that a later identical request may well get past.
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_TRANSIENT_CODES = frozenset({90055})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """RFC 9110 section 10.2.3: delay-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from_response(
    status: int, body: object, retry_after: float | None, secrets: Iterable[str] = ()
) -> CredentialError:
    """Classify a non-200 answer of a token endpoint.

    ``secrets``: what the request proved the client with. Entra never echoes it, but whatever
    answered may not be Entra, so none of its text is kept without them redacted.
    """
    fields = body if isinstance(body, Mapping) else {}
    error = str(fields.get("error") or TokenErrorCode.TOKEN_HTTP.with_status(status))
    codes = fields.get("error_codes")
    aadsts = [c for c in codes if isinstance(c, int)] if isinstance(codes, list) else []
    code = f"AADSTS{aadsts[0]}" if aadsts else error
    description = safe_message(str(fields.get("error_description") or ""), secrets)
    hint = next((HINTS[c] for c in aadsts if c in HINTS), "")
    message = description or f"the token service answered HTTP {status} ({error})"
    transient = (
        status == 429
        or status >= 500
        or status == 408
        or error in _TRANSIENT_ERRORS
        or any(c in _TRANSIENT_CODES for c in aadsts)
    )
    cls = CredentialUnavailable if transient else AuthenticationFailed
    correlation = fields.get("correlation_id")
    return cls(
        message,
        code=code,
        hint=hint,
        retry_after=retry_after,
        correlation_id=correlation if isinstance(correlation, str) else "",
        secrets=secrets,
    )
