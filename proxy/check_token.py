"""`foundry-proxy check`'s token steps: what a failed token request means and what to do about
it (advice keyed by the proxy's error codes), and what a token's claims say."""

from __future__ import annotations

import math
import time
from types import MappingProxyType

from proxy.check_report import Step
from proxy.check_upstream import NETWORK_FIX, TLS_FIX
from proxy.clouds import DATA_PLANE_AUDIENCES
from proxy.credentials.claims import decode_claims, scope_resource
from proxy.credentials.codes import TokenErrorCode, parse_code
from proxy.credentials.provider import fingerprint
from proxy.errors import CredentialError

ENTRA_HOST_FIX = (
    "AZURE_AUTHORITY_HOST must be an Entra login host such as https://login.microsoftonline.com "
    "(a proxy or portal may have answered instead)"
)

# What to do about each of the proxy's own token error codes; Entra's AADSTS codes come with
# their hint already (credentials/entra_errors.py).
_TOKEN_FIXES: MappingProxyType[TokenErrorCode, str] = MappingProxyType(
    {
        TokenErrorCode.TOKEN_DNS_ERROR: "check AZURE_AUTHORITY_HOST and this machine's DNS; "
        + NETWORK_FIX,
        TokenErrorCode.TOKEN_UNREACHABLE: NETWORK_FIX,
        TokenErrorCode.TOKEN_TIMEOUT: NETWORK_FIX,
        TokenErrorCode.TOKEN_TLS_ERROR: TLS_FIX,
        TokenErrorCode.IMDS_UNREACHABLE: "run on an Azure VM, scale set or AKS node with a "
        "managed identity, or choose another FOUNDRY_PROXY_CREDENTIAL",
        TokenErrorCode.IMDS_UNAVAILABLE: "IMDS is busy or updating: try again in a minute",
        TokenErrorCode.IDENTITY_ENDPOINT_UNAVAILABLE: "the platform's identity endpoint is busy: "
        "try again in a minute",
        TokenErrorCode.IDENTITY_ENDPOINT_UNREACHABLE: "IDENTITY_ENDPOINT is set by App Service "
        "and Container Apps; outside them, unset it",
    }
)
# The credentials that call the Entra token endpoint themselves (where an answer that is not
# a token response means AZURE_AUTHORITY_HOST points at something else).
_ENTRA_KINDS = frozenset({"secret", "certificate", "workload-identity"})


def _token_fix(err: CredentialError, credential: str) -> str:
    code, status = parse_code(err.code)
    if err.hint:
        return err.hint
    if code is TokenErrorCode.MALFORMED_TOKEN_RESPONSE and credential in _ENTRA_KINDS:
        return ENTRA_HOST_FIX
    if code is TokenErrorCode.TOKEN_HTTP and status is not None and 300 <= status < 400:
        return (
            "something redirected the token request: AZURE_AUTHORITY_HOST must be the Entra "
            "login host itself, e.g. https://login.microsoftonline.com"
        )
    fix = _TOKEN_FIXES.get(code) if code is not None else None
    return fix or "look the error code up in Microsoft's Entra error code reference"


def token_failure(err: CredentialError, kind: str, credential: str) -> Step:
    """``kind``: the credential's display name; ``credential``: FOUNDRY_PROXY_CREDENTIAL."""
    return Step(
        "token",
        "fail",
        f"the {kind} could not get a token ({err.code})",
        cause=err.message,
        fix=_token_fix(err, credential),
        details={"code": err.code},
    )


def describe_claims(token: str, scope: str, default_scope: str) -> Step:
    claims = decode_claims(token)
    print_id = fingerprint(token)
    if claims is None:
        return Step(
            "token contents", "warn", f"token {print_id} is not a readable JWT; not inspected"
        )
    expected = scope_resource(scope)
    audience = str(claims.get("aud", ""))
    exp = claims.get("exp")
    left = (
        int(float(exp) - time.time())
        if isinstance(exp, int | float) and math.isfinite(float(exp)) and abs(float(exp)) < 1e12
        else None
    )
    details = {
        "fingerprint": print_id,
        "audience": audience,
        "tenant": claims.get("tid"),
        "app_id": claims.get("appid") or claims.get("azp"),
        "expires_in": left,
    }
    if "roles" in claims:
        details["roles"] = claims["roles"]
    summary = (
        f"token {print_id}: audience {audience}, tenant {details['tenant']}, "
        f"app {details['app_id']}, expires in {left} s"
    )
    audience = audience.rstrip("/")
    if audience != expected.rstrip("/"):
        cause = f"the audience is {audience}, but FOUNDRY_PROXY_SCOPE asks for {expected}"
    elif audience not in DATA_PLANE_AUDIENCES:
        cause = (
            f"the audience is {audience}: Foundry and Azure OpenAI accept tokens for "
            f"{DATA_PLANE_AUDIENCES[0]} or {DATA_PLANE_AUDIENCES[1]}"
        )
    else:
        return Step("token contents", "ok", summary, details=details)
    fix = f"set FOUNDRY_PROXY_SCOPE={default_scope}"
    return Step("token contents", "warn", summary, cause=cause, fix=fix, details=details)
