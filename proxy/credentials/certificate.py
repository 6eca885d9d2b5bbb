"""Certificate credentials: the app proves itself with a JWT signed by its certificate's key.

Entra ID's certificate credential is an RFC 7523 client assertion (entra-docs
certificate-credentials.md). The ``cryptography`` package is an optional extra, imported only
here and only when a certificate is configured, so every other credential works without it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from proxy.credentials.client_credentials import JWT_BEARER
from proxy.errors import ConfigError

log = logging.getLogger("foundry_proxy.token")

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.x509 import Certificate

PATH_SETTING = "AZURE_CLIENT_CERTIFICATE_PATH"
PASSWORD_SETTING = "AZURE_CLIENT_CERTIFICATE_PASSWORD"  # noqa: S105 (a setting name)
MISSING_CRYPTOGRAPHY = (
    f"{PATH_SETTING} needs the 'cryptography' package: pip install 'foundry-proxy[certificate]'"
)
# Long enough to renew the certificate in the App Registration before Entra refuses it.
EXPIRY_WARNING = timedelta(days=30)


def b64url(data: bytes) -> str:
    """Base64url without padding: the JWS encoding of every part (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A loaded certificate credential; the private key never appears in a repr."""

    key: RSAPrivateKey = field(repr=False)
    leaf_der: bytes = field(repr=False)
    chain_der: tuple[bytes, ...] = field(repr=False)
    #: ``x5t#S256`` (RFC 7515 section 4.1.8): base64url SHA-256 of the leaf's DER.
    thumbprint_sha256: str
    #: ``x5t`` (RFC 7515 section 4.1.7): base64url SHA-1 of the leaf's DER, for RS256.
    thumbprint_sha1: str
    not_after: datetime
    #: Problems worth a log line at startup that do not stop the proxy (expiry).
    warnings: tuple[str, ...] = ()


def _problem(text: str) -> ConfigError:
    return ConfigError([text])


def load_certificate(
    path: Path, password: str | None, *, now: datetime | None = None
) -> ClientCertificate:
    """Read a PEM (key plus certificates, leaf first) or PKCS#12 file into a ClientCertificate.

    Raises ConfigError naming the setting and the problem; messages never hold key material or
    the password. ``now`` exists for tests of the expiry warnings.
    """
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise _problem(MISSING_CRYPTOGRAPHY) from None
    # Synchronous on purpose: this runs once while the settings are checked, before the event
    # loop serves anything, so there is nothing to block.
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _problem(f"could not read {PATH_SETTING} ({path}): {type(exc).__name__}") from None
    secret = password.encode("utf-8") if password is not None else None
    # Detect by content: .pem, .crt and .key files are all seen holding PKCS#12 and vice versa.
    if b"-----BEGIN" in data:
        key, leaf, chain = _read_pem(path, data, secret)
    else:
        key, leaf, chain = _read_pkcs12(path, data, secret)
    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    not_after = leaf.not_valid_after_utc
    return ClientCertificate(
        key=key,
        leaf_der=leaf_der,
        chain_der=tuple(c.public_bytes(serialization.Encoding.DER) for c in chain),
        thumbprint_sha256=b64url(hashlib.sha256(leaf_der).digest()),
        # SHA-1 only names the certificate here (x5t); it protects nothing.
        thumbprint_sha1=b64url(hashlib.sha1(leaf_der, usedforsecurity=False).digest()),
        not_after=not_after,
        warnings=_expiry_warnings(path, not_after, now or datetime.now(UTC)),
    )


def _read_pem(
    path: Path, data: bytes, secret: bytes | None
) -> tuple[RSAPrivateKey, Certificate, list[Certificate]]:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if b"PRIVATE KEY-----" not in data:
        raise _problem(f"{PATH_SETTING} ({path}) holds no private key: put the key in the file")
    try:
        key: Any = serialization.load_pem_private_key(data, secret)
    except TypeError:
        # cryptography raises TypeError both for "encrypted, no password" and "password given,
        # key not encrypted"; the second is harmless, so read the key without it.
        if secret is None:
            raise _problem(
                f"the private key in {PATH_SETTING} ({path}) is encrypted: set {PASSWORD_SETTING}"
            ) from None
        try:
            key = serialization.load_pem_private_key(data, None)
        except (TypeError, ValueError, UnsupportedAlgorithm):
            raise _problem(
                f"the private key in {PATH_SETTING} ({path}) could not be read"
            ) from None
    except (ValueError, UnsupportedAlgorithm):
        reason = f"wrong {PASSWORD_SETTING}, or" if secret is not None else "it is"
        raise _problem(
            f"the private key in {PATH_SETTING} ({path}) could not be read: {reason} not a "
            "valid PEM private key"
        ) from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise _problem(
            f"{PATH_SETTING} ({path}) holds no readable certificate: append the certificate "
            "(PEM) after the private key"
        ) from None
    return _match(path, key, certificates[0], certificates[1:])


def _read_pkcs12(
    path: Path, data: bytes, secret: bytes | None
) -> tuple[RSAPrivateKey, Certificate, list[Certificate]]:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        key, leaf, extra = pkcs12.load_key_and_certificates(data, secret)
    except (ValueError, UnsupportedAlgorithm):
        # cryptography does not tell a wrong password from a file that is not PKCS#12.
        if secret is None:
            reason = f"it is password-protected and {PASSWORD_SETTING} is not set, or"
        else:
            reason = f"{PASSWORD_SETTING} is wrong, or"
        raise _problem(
            f"{PATH_SETTING} ({path}) is not PEM and could not be opened as PKCS#12 "
            f"(.pfx/.p12): {reason} it is not a certificate file"
        ) from None
    if key is None:
        raise _problem(f"{PATH_SETTING} ({path}) holds no private key: export it with the key")
    if leaf is None:
        raise _problem(f"{PATH_SETTING} ({path}) holds no certificate")
    return _match(path, key, leaf, list(extra))


def _match(
    path: Path, key: object, leaf: Certificate, chain: list[Certificate]
) -> tuple[RSAPrivateKey, Certificate, list[Certificate]]:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    # Entra signs and checks client assertions with RSA only (PS256, or RS256 for legacy).
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _problem(
            f"the private key in {PATH_SETTING} ({path}) is not an RSA key: Entra certificate "
            "credentials need RSA"
        )
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise _problem(
            f"the private key in {PATH_SETTING} ({path}) does not belong to its first "
            "certificate: put the key's own certificate first, then the chain"
        )
    return key, leaf, chain


def _expiry_warnings(path: Path, not_after: datetime, now: datetime) -> tuple[str, ...]:
    # Not an error: the certificate may already be renewed in Entra and the file about to be
    # replaced, and Entra itself gives the final answer if it is not.
    day = not_after.strftime("%Y-%m-%d")
    if not_after <= now:
        return (f"the certificate in {PATH_SETTING} ({path}) expired on {day}",)
    if not_after - now <= EXPIRY_WARNING:
        days = (not_after - now).days
        return (f"the certificate in {PATH_SETTING} ({path}) expires on {day}, in {days} days",)
    return ()


class CertificateAuth:
    """A fresh signed client assertion for every token request (a ClientAuth).

    Token requests are rare (about once an hour) and signing costs about a millisecond of CPU,
    so it runs on the event loop; a new assertion each time keeps every ``jti`` unique
    (RFC 7523 section 3) instead of caching one until it nearly expires.
    """

    def __init__(
        self,
        certificate: ClientCertificate,
        client_id: str,
        *,
        algorithm: Literal["PS256", "RS256"] = "PS256",
        send_chain: bool = False,
        lifetime: float = 600.0,
    ) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        self._certificate = certificate
        self._client_id = client_id
        self._lifetime = lifetime
        self._padding: AsymmetricPadding
        header: dict[str, Any] = {"alg": algorithm, "typ": "JWT"}
        if algorithm == "PS256":
            # RFC 7518 section 3.5: MGF1 with the same hash, salt as long as the digest.
            self._padding = padding.PSS(
                mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH
            )
            header["x5t#S256"] = certificate.thumbprint_sha256
        elif algorithm == "RS256":
            # Legacy form (entra-docs certificate-credentials.md): PKCS#1 v1.5 named by SHA-1.
            self._padding = padding.PKCS1v15()
            header["x5t"] = certificate.thumbprint_sha1
        else:
            raise ConfigError([f"unsupported client assertion algorithm {algorithm!r}"])
        if send_chain:
            # RFC 7515 section 4.1.6: x5c is standard base64 (not base64url), leaf first; Entra
            # reads it only for subject name and issuer authentication.
            header["x5c"] = [
                base64.b64encode(der).decode("ascii")
                for der in (certificate.leaf_der, *certificate.chain_der)
            ]
        self._header = b64url(_compact_json(header))
        self._hash = hashes.SHA256()

    def assertion(self, token_endpoint: str) -> str:
        """A signed JWT for ``token_endpoint`` (entra-docs certificate-credentials.md claims)."""
        now = time.time()
        claims = {
            # The exact token URL: Entra answers AADSTS700023 to any other audience.
            "aud": token_endpoint,
            "iss": self._client_id,
            "sub": self._client_id,
            "jti": str(uuid.uuid4()),
            "nbf": int(now),
            "iat": int(now),
            "exp": int(now + self._lifetime),
        }
        signing_input = f"{self._header}.{b64url(_compact_json(claims))}".encode("ascii")
        signature = self._certificate.key.sign(signing_input, self._padding, self._hash)
        return f"{signing_input.decode('ascii')}.{b64url(signature)}"

    async def form_fields(self, token_endpoint: str) -> Mapping[str, str]:
        return {
            "client_assertion_type": JWT_BEARER,
            "client_assertion": self.assertion(token_endpoint),
        }


def _compact_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


class RotatingCertificateAuth:
    """CertificateAuth that follows its file: Key Vault's CSI driver and cert-manager replace
    the certificate in place before the old one expires, so the file is checked (in a thread)
    at every token request and loaded again when it changed. A new file that does not load is
    reported and the certificate in use is kept: it may well still be registered and valid.
    """

    def __init__(
        self,
        path: Path,
        password: str | None,
        client_id: str,
        *,
        algorithm: Literal["PS256", "RS256"] = "PS256",
        send_chain: bool = False,
    ) -> None:
        self._path = path
        self._password = password
        self._make = functools.partial(
            CertificateAuth, client_id=client_id, algorithm=algorithm, send_chain=send_chain
        )
        self._stamp = self._file_stamp()
        self.certificate = load_certificate(path, password)
        self._auth = self._make(self.certificate)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self._path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    async def _reload_if_changed(self) -> None:
        stamp = await asyncio.to_thread(self._file_stamp)
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            certificate = await asyncio.to_thread(load_certificate, self._path, self._password)
        except ConfigError as exc:
            log.warning(
                "the changed certificate file was not loaded; keeping the current one: %s",
                "; ".join(exc.problems),
            )
            return
        self.certificate = certificate
        self._auth = self._make(certificate)
        log.info("certificate reloaded from %s (%s)", self._path, certificate.thumbprint_sha256)
        for warning in certificate.warnings:
            log.warning("%s", warning)

    async def form_fields(self, token_endpoint: str) -> Mapping[str, str]:
        await self._reload_if_changed()
        return await self._auth.form_fields(token_endpoint)
