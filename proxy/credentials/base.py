"""What every credential kind produces and promises: an AccessToken for a scope."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from proxy.credentials.codes import TokenErrorCode
from proxy.errors import CredentialUnavailable

# Entra tokens live 60-90 minutes (24-28 h with CAE); anything beyond a year is a broken answer.
_MAX_LIFETIME = 366 * 24 * 3600


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A bearer token and its timing, all in seconds.

    ``expires_in`` is the lifetime as told by the token service; ``refresh_in`` its hint for when
    to refresh, if it gave one. The token itself never appears in a repr.
    """

    token: str = field(repr=False)
    expires_in: float
    refresh_in: float | None = None


class Credential(Protocol):
    """One way of obtaining Entra tokens (client secret, certificate, managed identity, ...)."""

    #: Short name for logs and errors, e.g. "client secret".
    kind: str

    async def get_token(self, scope: str) -> AccessToken:
        """Ask the token service for a new token; raise a CredentialError subclass on failure."""
        ...

    async def aclose(self) -> None:
        """Release what the credential holds (connections, files)."""
        ...


def _seconds(body: Mapping[str, object], key: str) -> float | None:
    return number(body.get(key))


def number(raw: object) -> float | None:
    """A finite number given as a JSON number or a string of one, else None.

    Entra v2 gives integers; v1-style and managed-identity endpoints (and the CLIs) give the
    same numbers as strings, so accept both (azure-identity parses with int(str(x)) for the
    same reason).
    """
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = float(str(raw))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_token_response(body: object) -> AccessToken:
    """Turn an OAuth 2.0 token response body (RFC 6749 section 5.1) into an AccessToken.

    Raises CredentialUnavailable for a malformed answer: missing token, missing or absurd
    lifetime. The error message names the problem, never the body.
    """
    if not isinstance(body, Mapping):
        raise CredentialUnavailable(
            "the token service answered with something that is not a JSON object",
            code=TokenErrorCode.MALFORMED_TOKEN_RESPONSE,
        )
    token = body.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise CredentialUnavailable(
            "the token service's answer has no access_token",
            code=TokenErrorCode.MALFORMED_TOKEN_RESPONSE,
        )
    expires_in = _seconds(body, "expires_in")
    if expires_in is None or not 0 < expires_in <= _MAX_LIFETIME:
        raise CredentialUnavailable(
            "the token service's answer has no valid expires_in",
            code=TokenErrorCode.MALFORMED_TOKEN_RESPONSE,
        )
    refresh_in = _seconds(body, "refresh_in")
    if refresh_in is not None and not 0 < refresh_in < expires_in:
        refresh_in = None
    return AccessToken(token=token, expires_in=expires_in, refresh_in=refresh_in)
