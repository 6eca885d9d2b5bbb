"""Reading a JWT access token's claims without verifying it (for diagnostics only).

The proxy never trusts these claims; `foundry-proxy check` shows them so a person can see which
audience, tenant and app a token is for.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def decode_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT as a dict, or None when the token is not a readable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def scope_resource(scope: str) -> str:
    """``https://x.azure.com/.default`` -> ``https://x.azure.com`` (the token's audience)."""
    return scope.removesuffix("/.default")
