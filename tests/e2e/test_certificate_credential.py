"""Certificate credentials through the running proxy: PEM and PKCS#12, rollover under load,
subject name + issuer, and the startup errors a bad certificate file gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.e2e.stack import Stack, chat_load, clean_environment, openai_client, run_proxy
from tests.fakes.certificates import cert_pem, key_pem, make_certificate, pfx, rsa_key

pytestmark = pytest.mark.e2e

PASSWORD = "CANARY-SECRET-pfx-password-4711"


def _use_certificate(s: Stack, path: Path, **extra: str) -> None:
    del s.env["AZURE_CLIENT_SECRET"]
    s.env |= {"AZURE_CLIENT_CERTIFICATE_PATH": str(path), **extra}


def test_pem_certificate_rolls_over_under_load(fresh_stack: Stack, tmp_path: Path) -> None:
    s = fresh_stack
    key = rsa_key()
    cert = make_certificate(key, "foundry-proxy-test")
    path = tmp_path / "app.pem"
    path.write_bytes(key_pem(key) + cert_pem(cert))
    s.entra.certificates.append(cert.public_bytes(serialization.Encoding.DER))
    s.entra.token_lifetime = 4
    _use_certificate(s, path)
    proxy = s.start_proxy()
    assert "(certificate of app" in proxy.log
    reply = openai_client(s).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content
    ok, failures = chat_load(s.url, 6)
    assert failures == []
    assert ok > 20
    assert len({e.token_serial for e in s.foundry.journal}) >= 3
    headers = [c.assertion_header for c in s.entra.calls]
    assert all(h is not None and h["alg"] == "PS256" and "x5t#S256" in h for h in headers)
    assert all(c.status == 200 for c in s.entra.calls)
    # Each token request signs a new assertion (the emulator refuses a replayed jti).
    key_lines = key_pem(key).decode().splitlines()[1:-1]
    assert not any(line in proxy.log for line in key_lines)


def test_pkcs12_with_password_and_chain_for_subject_name_auth(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    s = fresh_stack
    ca_key, key = rsa_key(), rsa_key()
    leaf = make_certificate(key, "proxy.contoso.example", issuer=(ca_key, "Contoso Test CA"))
    path = tmp_path / "app.pfx"
    path.write_bytes(pfx(key, leaf, PASSWORD))
    # Nothing registered by thumbprint: trusted by subject name, as the manifest allows.
    s.entra.subject_name_issuer = True
    s.entra.trusted_subject = "proxy.contoso.example"
    _use_certificate(
        s,
        path,
        AZURE_CLIENT_CERTIFICATE_PASSWORD=PASSWORD,
        AZURE_CLIENT_SEND_CERTIFICATE_CHAIN="true",
        FOUNDRY_PROXY_CERTIFICATE_ALGORITHM="RS256",
    )
    proxy = s.start_proxy()
    reply = openai_client(s).embeddings.create(model="emb", input="hello")
    assert reply.data
    header = s.entra.calls[-1].assertion_header
    assert header is not None
    assert header["alg"] == "RS256"
    assert "x5t" in header
    assert "x5c" in header
    assert PASSWORD not in proxy.log


def test_unregistered_certificate_says_how_to_fix_it(fresh_stack: Stack, tmp_path: Path) -> None:
    import httpx2

    from tests.support.readiness import wait_until

    s = fresh_stack
    key = rsa_key()
    path = tmp_path / "app.pem"
    path.write_bytes(key_pem(key) + cert_pem(make_certificate(key, "not-uploaded")))
    _use_certificate(s, path)
    s.start_proxy(ready=False)
    assert wait_until(lambda: httpx2.get(s.url + "/readyz").json().get("fix"), 5)
    ready = httpx2.get(s.url + "/readyz").json()
    assert "AADSTS50012" in ready["reason"]
    assert "upload the public certificate" in ready["fix"]


def test_wrong_password_is_a_startup_error_without_the_password(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    s = fresh_stack
    key = rsa_key()
    path = tmp_path / "app.pfx"
    path.write_bytes(pfx(key, make_certificate(key, "x"), PASSWORD))
    env = clean_environment() | s.env
    del env["AZURE_CLIENT_SECRET"]
    env |= {
        "AZURE_CLIENT_CERTIFICATE_PATH": str(path),
        "AZURE_CLIENT_CERTIFICATE_PASSWORD": PASSWORD + "-wrong",
    }
    result = run_proxy(["--port", "0"], env)
    assert result.returncode == 2
    assert "AZURE_CLIENT_CERTIFICATE_PASSWORD" in result.stderr
    assert PASSWORD not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_certificate_replaced_in_place_is_picked_up(fresh_stack: Stack, tmp_path: Path) -> None:
    """Key Vault's CSI driver or cert-manager rewrites the file before the old certificate
    goes: the next token request signs with the new one, no restart, no failed request."""
    import base64
    import hashlib

    s = fresh_stack
    old_key, new_key = rsa_key(), rsa_key()
    old, new = make_certificate(old_key, "old"), make_certificate(new_key, "new")
    path = tmp_path / "app.pem"
    path.write_bytes(key_pem(old_key) + cert_pem(old))
    der = {c: c.public_bytes(serialization.Encoding.DER) for c in (old, new)}
    s.entra.certificates.append(der[old])
    s.entra.token_lifetime = 3
    _use_certificate(s, path)
    proxy = s.start_proxy()
    ok, failures = chat_load(s.url, 1, workers=2)
    # Rotation: upload the new certificate, replace the file, then retire the old one.
    s.entra.certificates.append(der[new])
    path.write_bytes(key_pem(new_key) + cert_pem(new))
    s.entra.certificates.remove(der[old])
    more, more_failures = chat_load(s.url, 4, workers=2)
    assert failures + more_failures == []
    assert ok + more > 10
    new_thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der[new]).digest()).rstrip(b"=")
    last = s.entra.calls[-1]
    assert last.status == 200
    assert last.assertion_header is not None
    assert last.assertion_header["x5t#S256"] == new_thumbprint.decode()
    assert "certificate reloaded from" in proxy.log
