"""Emulated Entra ID v2 token endpoint (client credentials).

It checks tenant, client id, the client's proof (secret, federated token or certificate
assertion) and scope in Entra's order and answers failures with the real AADSTS codes and error
body shape, so the proxy's error handling meets what it will meet in production
(docs/azure.md, section 1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.emulator.tokens import TokenIssuer

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# Resources that exist in every tenant of the public cloud; others get AADSTS500011.
KNOWN_RESOURCES = frozenset(
    {
        "https://cognitiveservices.azure.com",
        "https://ai.azure.com",
        "https://ml.azure.com",
        "https://management.azure.com",
        "https://graph.microsoft.com",
    }
)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    #: Sent as is instead of ``body`` (what a captive portal or broken gateway might send).
    raw: bytes | None = None


def entra_error(status: int, error: str, code: int, text: str) -> Answer:
    """An error answer shaped like Entra's (error, error_description, error_codes, ids)."""
    trace, correlation = uuid.uuid4(), uuid.uuid4()
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    # Entra puts the ids on their own lines after the message, CRLF-separated.
    description = (
        f"AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\n"
        f"Timestamp: {stamp}"
    )
    body = {
        "error": error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": str(trace),
        "correlation_id": str(correlation),
    }
    return Answer(status, body)


class EmulatedEntra:
    """``POST /{tenant}/oauth2/v2.0/token``; ``app`` is the ASGI app to serve."""

    def __init__(
        self,
        issuer: TokenIssuer,
        *,
        tenant: str,
        client_id: str,
        secret: str,
        token_lifetime: float = 3600.0,
    ) -> None:
        self.issuer = issuer
        self.tenant = tenant
        self.client_id = client_id
        self.secret = secret
        self.token_lifetime = token_lifetime
        self.refresh_in: float | None = None
        #: The service-account token a federated credential accepts (workload identity).
        self.federated_assertion: str | None = None
        #: DER of the certificates uploaded to the App Registration (certificate credentials).
        self.certificates: list[bytes] = []
        #: Subject name and issuer authentication: accept an unregistered certificate sent in
        #: ``x5c`` whose leaf subject CN is ``trusted_subject``.
        self.subject_name_issuer = False
        self.trusted_subject: str | None = None
        #: Clock skew allowed on ``nbf``: five minutes, the usual allowance of token validators.
        self.clock_skew = 300.0
        # jti -> exp of every accepted certificate assertion, kept until it would expire anyway.
        self._seen_jtis: dict[str, float] = {}
        self.app = Starlette(
            routes=[Route("/{tenant}/oauth2/v2.0/token", self._endpoint, methods=["POST"])]
        )

    async def _endpoint(self, request: Request) -> Response:
        form = {
            k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()
        }
        # The audience a certificate assertion must name: this endpoint's own URL, as called.
        url = request.url
        token_url = f"{url.scheme}://{url.netloc}{url.path}"
        answer = await self.answer(request.path_params["tenant"], form, token_url=token_url)
        headers = dict(answer.headers) | {"x-ms-ests-server": "foundry-proxy-emulator"}
        if answer.raw is not None:
            return Response(answer.raw, answer.status, headers, media_type="text/html")
        return JSONResponse(answer.body, answer.status, headers)

    async def answer(self, tenant: str, form: dict[str, str], *, token_url: str = "") -> Answer:
        """Judge one token request; subclasses may script other answers.

        ``token_url`` is the URL the request came to, which a certificate assertion's ``aud``
        must equal; left empty, no certificate assertion is accepted.
        """
        if tenant not in (self.tenant, "emulator.onmicrosoft.com"):
            return entra_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return entra_error(
                400, "unsupported_grant_type", 70003, "The grant type is not supported."
            )
        if form.get("client_id") != self.client_id:
            return entra_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id', '')}' was not found in "
                f"the directory '{tenant}'.",
            )
        if "client_assertion" in form:
            if form.get("client_assertion_type") != JWT_BEARER:
                return entra_error(400, "invalid_request", 50027, "Invalid client_assertion_type.")
            assertion = form["client_assertion"]
            federated = assertion == self.federated_assertion
            header = None if federated else _jwt_header(assertion)
            # A certificate assertion names its certificate; a federated token names its key.
            if header is not None and ("x5t#S256" in header or "x5t" in header):
                refusal = self._judge_certificate_assertion(assertion, header, token_url)
                if refusal is not None:
                    return refusal
            elif not federated:
                return entra_error(
                    400,
                    "invalid_client",
                    700213,
                    "No matching federated identity record found for presented assertion subject.",
                )
        elif "client_secret" not in form:
            return entra_error(
                401, "invalid_client", 7000218, "The request body must contain client_secret."
            )
        elif form["client_secret"] != self.secret:
            return entra_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID.",
            )
        scope = form.get("scope", "")
        if not scope.endswith("/.default") or " " in scope.strip():
            return entra_error(
                400, "invalid_scope", 70011, f"The provided scope '{scope}' is not valid."
            )
        resource = scope.removesuffix("/.default")
        if resource not in KNOWN_RESOURCES:
            return entra_error(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant.",
            )
        token = self.issuer.issue(
            tenant=self.tenant,
            client_id=self.client_id,
            audience=resource,
            lifetime=self.token_lifetime,
        )
        lifetime = self.token_lifetime
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": int(lifetime) if float(lifetime).is_integer() else lifetime,
            "ext_expires_in": int(lifetime),
            "access_token": token,
        }
        if self.refresh_in is not None:
            body["refresh_in"] = self.refresh_in
        return Answer(200, body)

    def _judge_certificate_assertion(
        self, assertion: str, header: dict[str, Any], token_url: str
    ) -> Answer | None:
        """None when the assertion is good (entra-docs certificate-credentials.md), else the
        refusal Entra would give."""
        # Imported here: the emulator ships in the package, which must import without the
        # optional 'cryptography'; only certificate assertions need it.
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        signing_input, _, signature_part = assertion.rpartition(".")
        claims = _jwt_part(signing_input.partition(".")[2])
        signature = _b64url_decode(signature_part)
        if claims is None or signature is None:
            return entra_error(400, "invalid_request", 50027, "JWT token is invalid or malformed.")
        leaf_der = self._signing_certificate(header)
        if isinstance(leaf_der, Answer):
            return leaf_der
        public_key = x509.load_der_x509_certificate(leaf_der).public_key()
        alg = header.get("alg")
        chosen: padding.AsymmetricPadding
        if alg == "PS256":
            # RFC 7518 section 3.5: the salt is exactly as long as the SHA-256 digest.
            chosen = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        elif alg == "RS256":
            chosen = padding.PKCS1v15()
        else:
            return _invalid_signature()
        if not isinstance(public_key, rsa.RSAPublicKey):
            return _invalid_signature()
        try:
            public_key.verify(signature, signing_input.encode("ascii"), chosen, hashes.SHA256())
        except InvalidSignature:
            return _invalid_signature()
        if claims.get("aud") != token_url or not token_url:
            return entra_error(
                401,
                "invalid_client",
                700023,
                "Client assertion audience claim does not match Realm issuer.",
            )
        if not claims.get("iss") == claims.get("sub") == self.client_id:
            return entra_error(
                401,
                "invalid_client",
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter.",
            )
        now = time.time()
        exp, nbf, jti = claims.get("exp"), claims.get("nbf", 0), claims.get("jti")
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
            return entra_error(400, "invalid_request", 50027, "JWT token is invalid or malformed.")
        if exp <= now or nbf > now + self.clock_skew:
            return entra_error(
                401,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range. "
                f"Current time: {_iso(now)}, assertion valid from {_iso(nbf)}, expiry time of "
                f"assertion {_iso(exp)}.",
            )
        self._seen_jtis = {j: e for j, e in self._seen_jtis.items() if e > now}
        if not isinstance(jti, str) or not jti or jti in self._seen_jtis:
            # Entra documents no replay check (MSAL reuses one assertion for minutes); the
            # emulator is stricter so tests prove every token request signs a new one. 700024
            # is the family of "this assertion is no longer usable", and its fix is the same:
            # sign a fresh assertion.
            return entra_error(
                401,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range: its jti was already used.",
            )
        self._seen_jtis[jti] = float(exp)
        return None

    def _signing_certificate(self, header: dict[str, Any]) -> bytes | Answer:
        """The DER of the certificate the header names, or why there is none."""
        named = _thumbprints(header)
        for der in self.certificates:
            if named & _thumbprints_of(der):
                return der
        x5c = header.get("x5c")
        if self.subject_name_issuer and isinstance(x5c, list) and x5c:
            return self._trusted_by_subject(x5c[0], named)
        return entra_error(
            401,
            "invalid_client",
            50012,
            "Authentication failed: the thumbprint of the signing certificate is not "
            "authorized for this application.",
        )

    def _trusted_by_subject(self, first: object, named: set[tuple[str, str]]) -> bytes | Answer:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        try:
            # RFC 7515 section 4.1.6: standard base64, so url-safe characters are refused.
            der = base64.b64decode(str(first), validate=True)
            leaf = x509.load_der_x509_certificate(der)
        except (binascii.Error, ValueError):
            return entra_error(400, "invalid_request", 50027, "JWT token is invalid or malformed.")
        if not named & _thumbprints_of(der):
            return _invalid_signature()
        names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if self.trusted_subject is None or [n.value for n in names] != [self.trusted_subject]:
            return entra_error(
                401,
                "invalid_client",
                700030,
                "Invalid certificate - subject name in certificate is not authorized.",
            )
        return der


def _invalid_signature() -> Answer:
    return entra_error(
        401, "invalid_client", 700027, "Client assertion contains an invalid signature."
    )


def _b64url_decode(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _jwt_part(text: str) -> dict[str, Any] | None:
    raw = _b64url_decode(text)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _jwt_header(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    return _jwt_part(parts[0]) if len(parts) == 3 else None


def _thumbprints(header: dict[str, Any]) -> set[tuple[str, str]]:
    """The (kind, value) thumbprints a JWS header names (RFC 7515 sections 4.1.7-4.1.8)."""
    return {(k, v) for k in ("x5t#S256", "x5t") if isinstance(v := header.get(k), str)}


def _thumbprints_of(der: bytes) -> set[tuple[str, str]]:
    # SHA-1 only names the certificate (x5t); it protects nothing.
    sha1 = hashlib.sha1(der, usedforsecurity=False).digest()
    return {
        ("x5t#S256", base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()),
        ("x5t", base64.urlsafe_b64encode(sha1).rstrip(b"=").decode()),
    }


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
