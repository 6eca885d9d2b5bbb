"""Certificate credentials end to end against the emulated Entra token endpoint.

Certificates are made at test time; the emulator checks each assertion's thumbprint, signature,
audience, issuer, time window and jti the way Entra documents them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from proxy.credentials.base import AccessToken
from proxy.credentials.certificate import (
    MISSING_CRYPTOGRAPHY,
    PASSWORD_SETTING,
    PATH_SETTING,
    CertificateAuth,
    ClientCertificate,
    load_certificate,
)
from proxy.credentials.client_credentials import JWT_BEARER, ClientCredentials
from proxy.errors import AuthenticationFailed, ConfigError
from tests.fakes.certificates import cert_pem, key_pem, make_certificate, pfx, rsa_key
from tests.fakes.entra import FakeEntra
from tests.fakes.serve import ServerThread
from tests.fakes.tokens import RecordingIssuer
from tests.support.identities import CLIENT_ID, TENANT
from tests.support.processes import run

SCOPE = "https://cognitiveservices.azure.com/.default"
PASSWORD = "pfx-canary-Zq8!w"  # must never show in an error
SUBJECT = "foundry-proxy.contoso.example"


# --- certificates made here -------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    other_key: rsa.RSAPrivateKey
    ca_key: rsa.RSAPrivateKey
    ca: x509.Certificate
    leaf_key: rsa.RSAPrivateKey
    leaf: x509.Certificate  # signed by ca, subject CN = SUBJECT

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def material() -> Material:
    key, ca_key, leaf_key = rsa_key(), rsa_key(), rsa_key()
    return Material(
        key=key,
        cert=make_certificate(key, "self-signed"),
        other_key=rsa_key(),
        ca_key=ca_key,
        ca=make_certificate(ca_key, "Contoso Test CA", ca=True),
        leaf_key=leaf_key,
        leaf=make_certificate(leaf_key, SUBJECT, issuer=(ca_key, "Contoso Test CA")),
    )


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _loaded(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> ClientCertificate:
    """A PEM file's certificate, read the way the proxy reads it."""
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), "c.pem", key_pem(key) + cert_pem(cert))
        return load_certificate(path, None)


# --- the emulated Entra -----------------------------------------------------------------------


@dataclass
class Entra:
    fake: FakeEntra
    issuer: RecordingIssuer
    server: ServerThread

    @property
    def token_url(self) -> str:
        return f"{self.server.url}/{TENANT}/oauth2/v2.0/token"


@pytest.fixture
def entra() -> Iterator[Entra]:
    issuer = RecordingIssuer()
    fake = FakeEntra(issuer, tenant=TENANT, client_id=CLIENT_ID, secret="unused")
    server = ServerThread(fake.app).start()
    try:
        yield Entra(fake, issuer, server)
    finally:
        server.stop()


class Recording:
    """A ClientAuth that keeps the fields of every request (to read the jti sent)."""

    def __init__(self, inner: CertificateAuth) -> None:
        self.inner = inner
        self.sent: list[Mapping[str, str]] = []

    async def form_fields(self, token_endpoint: str) -> Mapping[str, str]:
        fields = await self.inner.form_fields(token_endpoint)
        self.sent.append(fields)
        return fields


def _get_tokens(entra: Entra, auth: Any, count: int = 1) -> list[AccessToken]:
    async def run() -> list[AccessToken]:
        async with httpx2.AsyncClient() as http:
            credential = ClientCredentials(
                authority_host=entra.server.url,
                tenant_id=TENANT,
                client_id=CLIENT_ID,
                auth=auth,
                http=http,
                kind="certificate",
            )
            return [await credential.get_token(SCOPE) for _ in range(count)]

    return asyncio.run(run())


def _refusal(entra: Entra, auth: Any) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as caught:
        _get_tokens(entra, auth)
    return caught.value


def _post(entra: Entra, fields: Mapping[str, str]) -> httpx2.Response:
    async def run() -> httpx2.Response:
        async with httpx2.AsyncClient() as http:
            form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "scope": SCOPE}
            return await http.post(entra.token_url, data={**form, **fields})

    return asyncio.run(run())


def _decode(part: str) -> dict[str, Any]:
    value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    assert isinstance(value, dict)
    return value


def _parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    head, body, signature = assertion.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    return _decode(head), _decode(body), f"{head}.{body}".encode(), raw


def _auth(
    cert: ClientCertificate,
    algorithm: Literal["PS256", "RS256"] = "PS256",
    **options: Any,
) -> CertificateAuth:
    return CertificateAuth(cert, CLIENT_ID, algorithm=algorithm, **options)


# --- loading ----------------------------------------------------------------------------------


def test_pem_key_and_certificate_get_a_token_with_ps256(
    tmp_path: Path, material: Material, entra: Entra
) -> None:
    path = _write(tmp_path, "proxy.pem", key_pem(material.key) + cert_pem(material.cert))
    cert = load_certificate(path, None)
    entra.fake.certificates.append(material.der)

    [token] = _get_tokens(entra, _auth(cert))

    assert entra.issuer.serial(token.token) == 1
    [call] = entra.fake.calls
    assert call.status == 200
    assert call.assertion_header == {
        "alg": "PS256",
        "typ": "JWT",
        "x5t#S256": cert.thumbprint_sha256,
    }


def test_the_assertion_follows_the_entra_certificate_format(
    tmp_path: Path, material: Material
) -> None:
    path = _write(tmp_path, "proxy.pem", key_pem(material.key) + cert_pem(material.cert))
    cert = load_certificate(path, None)
    endpoint = f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"

    fields = asyncio.run(_auth(cert, lifetime=300).form_fields(endpoint))

    assert fields["client_assertion_type"] == JWT_BEARER
    header, claims, signed, signature = _parts(fields["client_assertion"])
    digest = base64.urlsafe_b64encode(hashlib.sha256(material.der).digest()).rstrip(b"=")
    assert header["x5t#S256"] == digest.decode() == cert.thumbprint_sha256
    assert claims["aud"] == endpoint
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == 300
    # RFC 7518 section 3.5: PSS with MGF1-SHA256 and a 32-byte salt; verify() raises otherwise.
    public_key = material.cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(
        signature,
        signed,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )


def test_pkcs12_with_a_password_gets_a_token(
    tmp_path: Path, material: Material, entra: Entra
) -> None:
    # Detected by content: the extension says nothing.
    path = _write(tmp_path, "proxy.bin", pfx(material.key, material.cert, PASSWORD))
    cert = load_certificate(path, PASSWORD)
    entra.fake.certificates.append(material.der)

    [token] = _get_tokens(entra, _auth(cert))

    assert entra.issuer.serial(token.token) == 1
    assert cert.leaf_der == material.der
    assert cert.chain_der == ()


def test_pkcs12_without_a_password_loads(tmp_path: Path, material: Material) -> None:
    path = _write(tmp_path, "proxy.pfx", pfx(material.key, material.cert, None))
    assert load_certificate(path, None).leaf_der == material.der


@pytest.mark.parametrize("password", ["wrong-password-Xy7", None])
def test_a_wrong_or_missing_pkcs12_password_is_a_config_error(
    tmp_path: Path, material: Material, password: str | None
) -> None:
    path = _write(tmp_path, "proxy.pfx", pfx(material.key, material.cert, PASSWORD))

    with pytest.raises(ConfigError) as caught:
        load_certificate(path, password)

    text = str(caught.value)
    assert PATH_SETTING in text
    assert PASSWORD_SETTING in text
    assert PASSWORD not in text
    if password:
        assert password not in text


def test_an_encrypted_pem_key_needs_its_password(tmp_path: Path, material: Material) -> None:
    data = key_pem(material.key, PASSWORD) + cert_pem(material.cert)
    path = _write(tmp_path, "proxy.pem", data)

    assert load_certificate(path, PASSWORD).leaf_der == material.der
    with pytest.raises(ConfigError, match=PASSWORD_SETTING):
        load_certificate(path, None)
    with pytest.raises(ConfigError, match=PASSWORD_SETTING) as caught:
        load_certificate(path, "not-it-" + PASSWORD)
    assert PASSWORD not in str(caught.value)


def test_rs256_names_the_certificate_by_sha1_and_is_accepted(
    tmp_path: Path, material: Material, entra: Entra
) -> None:
    path = _write(tmp_path, "proxy.pem", key_pem(material.key) + cert_pem(material.cert))
    cert = load_certificate(path, None)
    entra.fake.certificates.append(material.der)

    [token] = _get_tokens(entra, _auth(cert, "RS256"))

    assert entra.issuer.serial(token.token) == 1
    header = entra.fake.calls[0].assertion_header
    assert header == {"alg": "RS256", "typ": "JWT", "x5t": cert.thumbprint_sha1}


def test_the_chain_is_sent_in_x5c_for_subject_name_and_issuer_auth(
    tmp_path: Path, material: Material, entra: Entra
) -> None:
    data = key_pem(material.leaf_key) + cert_pem(material.leaf, material.ca)
    cert = load_certificate(_write(tmp_path, "chain.pem", data), None)
    ca_der = material.ca.public_bytes(serialization.Encoding.DER)
    assert cert.chain_der == (ca_der,)
    entra.fake.subject_name_issuer = True
    entra.fake.trusted_subject = SUBJECT

    [token] = _get_tokens(entra, _auth(cert, send_chain=True))

    assert entra.issuer.serial(token.token) == 1
    header = entra.fake.calls[0].assertion_header
    assert header is not None
    # Standard base64, leaf first (RFC 7515 section 4.1.6).
    assert [base64.b64decode(c, validate=True) for c in header["x5c"]] == [
        cert.leaf_der,
        ca_der,
    ]


def test_subject_name_auth_refuses_another_subject_or_a_missing_chain(
    tmp_path: Path, material: Material, entra: Entra
) -> None:
    data = key_pem(material.leaf_key) + cert_pem(material.leaf, material.ca)
    cert = load_certificate(_write(tmp_path, "chain.pem", data), None)
    entra.fake.subject_name_issuer = True
    entra.fake.trusted_subject = "someone-else.contoso.example"
    assert _refusal(entra, _auth(cert, send_chain=True)).code == "AADSTS700030"

    entra.fake.trusted_subject = SUBJECT
    assert _refusal(entra, _auth(cert)).code == "AADSTS50012"
    entra.fake.subject_name_issuer = False
    assert _refusal(entra, _auth(cert, send_chain=True)).code == "AADSTS50012"


def test_an_unregistered_certificate_is_refused(
    tmp_path: Path, material: Material, entra: Entra
) -> None:
    path = _write(tmp_path, "proxy.pem", key_pem(material.key) + cert_pem(material.cert))
    cert = load_certificate(path, None)
    entra.fake.certificates.append(material.leaf.public_bytes(serialization.Encoding.DER))

    error = _refusal(entra, _auth(cert))

    assert error.code == "AADSTS50012"
    assert error.permanent
    assert entra.issuer.issued == []


def test_a_signature_by_another_key_is_refused(material: Material, entra: Entra) -> None:
    # A certificate claiming the registered thumbprint but signed with a key that is not its own.
    registered = _loaded(material.key, material.cert)
    forged = ClientCertificate(
        key=material.other_key,
        leaf_der=registered.leaf_der,
        chain_der=(),
        thumbprint_sha256=registered.thumbprint_sha256,
        thumbprint_sha1=registered.thumbprint_sha1,
        not_after=registered.not_after,
    )
    entra.fake.certificates.append(material.der)

    assert _refusal(entra, _auth(forged)).code == "AADSTS700027"


def test_every_token_request_signs_a_new_assertion(material: Material, entra: Entra) -> None:
    cert = _loaded(material.key, material.cert)
    entra.fake.certificates.append(material.der)
    auth = Recording(_auth(cert))

    tokens = _get_tokens(entra, auth, count=2)

    assert [entra.issuer.serial(t.token) for t in tokens] == [1, 2]
    jtis = [_parts(f["client_assertion"])[1]["jti"] for f in auth.sent]
    assert len(set(jtis)) == 2


def test_a_replayed_assertion_is_refused(material: Material, entra: Entra) -> None:
    cert = _loaded(material.key, material.cert)
    entra.fake.certificates.append(material.der)
    fields = asyncio.run(_auth(cert).form_fields(entra.token_url))

    first, second = _post(entra, fields), _post(entra, fields)

    assert first.status_code == 200
    assert second.status_code == 401
    assert second.json()["error"] == "invalid_client"
    assert second.json()["error_codes"] == [700024]


def test_an_assertion_for_another_audience_is_refused(material: Material, entra: Entra) -> None:
    cert = _loaded(material.key, material.cert)
    entra.fake.certificates.append(material.der)
    elsewhere = f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
    fields = asyncio.run(_auth(cert).form_fields(elsewhere))

    answer = _post(entra, fields)

    assert answer.status_code == 401
    assert answer.json()["error_codes"] == [700023]


def test_an_expired_assertion_is_refused(material: Material, entra: Entra) -> None:
    cert = _loaded(material.key, material.cert)
    entra.fake.certificates.append(material.der)

    assert _refusal(entra, _auth(cert, lifetime=-60)).code == "AADSTS700024"


def test_an_assertion_for_another_client_is_refused(material: Material, entra: Entra) -> None:
    cert = _loaded(material.key, material.cert)
    entra.fake.certificates.append(material.der)
    fields = asyncio.run(CertificateAuth(cert, "another-client-id").form_fields(entra.token_url))

    assert _post(entra, fields).json()["error_codes"] == [700021]


def test_federated_assertions_still_work(entra: Entra) -> None:
    entra.fake.federated_assertion = "header.service-account.token"
    fields = {
        "client_assertion_type": JWT_BEARER,
        "client_assertion": "header.service-account.token",
    }

    assert _post(entra, fields).status_code == 200
    fields["client_assertion"] = "another.service-account.token"
    assert _post(entra, fields).json()["error_codes"] == [700213]


# --- configuration errors ---------------------------------------------------------------------


def _config_error(path: Path, password: str | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_certificate(path, password)
    text = str(caught.value)
    assert PATH_SETTING in text
    return text


def test_a_file_without_a_key_is_a_config_error(tmp_path: Path, material: Material) -> None:
    text = _config_error(_write(tmp_path, "cert.pem", cert_pem(material.cert)))
    assert "no private key" in text


def test_a_file_without_a_certificate_is_a_config_error(tmp_path: Path, material: Material) -> None:
    text = _config_error(_write(tmp_path, "key.pem", key_pem(material.key)))
    assert "no readable certificate" in text


def test_a_key_of_another_certificate_is_a_config_error(tmp_path: Path, material: Material) -> None:
    data = key_pem(material.other_key) + cert_pem(material.cert)
    assert "does not belong" in _config_error(_write(tmp_path, "p.pem", data))


def test_a_non_rsa_key_is_a_config_error(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    data = key_pem(key) + cert_pem(make_certificate(key, "ec"))
    assert "RSA" in _config_error(_write(tmp_path, "ec.pem", data))


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    assert "could not read" in _config_error(tmp_path / "missing.pem")
    assert "PKCS#12" in _config_error(_write(tmp_path, "junk.pfx", b"\x30\x03junk"))


def test_expiry_is_a_warning_not_an_error(tmp_path: Path, material: Material) -> None:
    soon = make_certificate(material.key, "soon", days=10)
    path = _write(tmp_path, "soon.pem", key_pem(material.key) + cert_pem(soon))

    [warning] = load_certificate(path, None).warnings
    assert "expires on" in warning
    later = datetime.now(UTC) + timedelta(days=20)
    [warning] = load_certificate(path, None, now=later).warnings
    assert "expired on" in warning
    assert _loaded(material.key, material.cert).warnings == ()


def test_without_cryptography_the_error_says_what_to_install(
    tmp_path: Path, material: Material, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "proxy.pem", key_pem(material.key) + cert_pem(material.cert))
    # None in sys.modules makes any import of the package (or its loaded submodules) fail.
    for name in [n for n in sys.modules if n == "cryptography" or n.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)

    with pytest.raises(ConfigError) as caught:
        load_certificate(path, None)

    assert caught.value.problems == [MISSING_CRYPTOGRAPHY]
    assert "pip install 'foundry-proxy[certificate]'" in str(caught.value)


def test_no_key_material_reaches_an_error_or_a_repr(
    tmp_path: Path, material: Material, entra: Entra
) -> None:
    pem_text = key_pem(material.key).decode()
    canaries = [line for line in pem_text.splitlines() if "-----" not in line]
    seen: list[str] = []
    for data, password in [
        (pem_text.encode(), None),
        (pem_text.encode() + cert_pem(material.leaf), None),
        (pem_text.encode()[:-200], None),
        (pfx(material.key, material.cert, PASSWORD), "wrong"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_certificate(_write(tmp_path, "x.pem", data), password)
        seen.append(str(caught.value))
    cert = _loaded(material.key, material.cert)
    auth = _auth(cert)
    seen += [repr(cert), str(cert), repr(auth)]
    refusal = _refusal(entra, auth)
    seen += [refusal.message, refusal.hint, str(refusal)]

    leaked = [c for c in canaries for text in seen if c in text]
    assert not leaked
    assert all(PASSWORD not in text for text in seen)


def test_the_modules_import_without_cryptography() -> None:
    code = (
        "import sys; sys.modules['cryptography'] = None; "
        "import proxy.credentials.certificate, proxy.emulator.entra"
    )
    done = run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
