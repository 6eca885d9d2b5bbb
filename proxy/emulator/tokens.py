"""Emulated access tokens: real JWT shape, signed with a key that exists only in this process."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from typing import Any

from proxy.credentials.claims import decode_claims

ISSUER = "https://login.emulator.foundry-proxy.invalid"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """Mints and checks emulated tokens (HS256 with a random per-process key)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def issue(self, *, tenant: str, client_id: str, audience: str, lifetime: float) -> str:
        now = time.time()
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": f"{ISSUER}/{tenant}/",
            "iat": int(now),
            "nbf": int(now),
            # RFC 7519 NumericDate may be fractional: second-long test tokens stay exact.
            "exp": round(now + lifetime, 3),
            "appid": client_id,
            "tid": tenant,
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, client_id)),
            "idtyp": "app",
            "ver": "1.0",
            "emulated": True,
            "jti": uuid.uuid4().hex,
        }
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._key, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64(signature)}"

    def verify(self, token: str, audiences: tuple[str, ...]) -> str | None:
        """None when the token is good for one of ``audiences``; else why not."""
        parts = token.split(".")
        if len(parts) != 3:
            return "malformed"
        expected = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_b64(expected), parts[2]):
            return "signature"
        claims = decode_claims(token) or {}
        if float(claims.get("exp", 0)) <= time.time():
            return "expired"
        if claims.get("aud") not in audiences:
            return "audience"
        return None
