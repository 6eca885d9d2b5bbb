"""A token endpoint that echoes the client's secret and a token back in its refusal.

Entra never does, but whatever answers at AZURE_AUTHORITY_HOST may not be Entra (a gateway, a
captive portal, a hostile host). Its text reaches the CredentialError, and from there the log,
/readyz, every 503 and `check`: none of them may show the secret or the token, and neither may
the exception itself however it is printed (str, repr, a traceback).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from pydantic import SecretStr

from proxy.credentials.client_credentials import (
    ClientAuth,
    ClientCredentials,
    SecretAuth,
    federated_token_auth,
    secret_file_auth,
)
from proxy.errors import CredentialError
from tests.e2e.stack import Stack, clean_environment, run_proxy
from tests.fakes.entra import FakeEntra
from tests.fakes.serve import ServerThread
from tests.fakes.tokens import RecordingIssuer
from tests.support.chat import CHAT
from tests.support.identities import CLIENT_ID, TENANT
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e

SCOPE = "https://cognitiveservices.azure.com/.default"
SECRET = "CANARY-SECRET-echoed-0123456789abcdef"


def _token(issuer: RecordingIssuer) -> str:
    """A real token of the fakes' issuer: what the echo repeats besides the client's proof."""
    return issuer.issue(
        tenant=TENANT, client_id=CLIENT_ID, audience="https://ai.azure.com", lifetime=3600
    )


def _shown(err: BaseException) -> list[str]:
    """Every way the exception may be printed or read."""
    return [
        str(err),
        repr(err),
        "".join(traceback.format_exception(err)),
        *(
            str(getattr(err, name, ""))
            for name in ("message", "code", "hint", "correlation_id", "args")
        ),
    ]


@pytest.fixture
def echoing() -> Iterator[tuple[FakeEntra, str]]:
    issuer = RecordingIssuer()
    fake = FakeEntra(issuer, tenant=TENANT, client_id=CLIENT_ID, secret=SECRET)
    server = ServerThread(fake.app).start()
    try:
        yield fake, server.url
    finally:
        server.stop()


def _refusal(url: str, auth: ClientAuth) -> CredentialError:
    async def run() -> CredentialError:
        async with httpx2.AsyncClient() as http:
            credential = ClientCredentials(
                authority_host=url, tenant_id=TENANT, client_id=CLIENT_ID, auth=auth, http=http
            )
            try:
                await credential.get_token(SCOPE)
            except CredentialError as err:
                return err
        raise AssertionError("the echoing endpoint gave a token")

    return asyncio.run(run())


ASSERTION = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXBwIn0.c2lnbmF0dXJl"


@pytest.mark.parametrize("kind", ["secret", "secret file", "federated token"])
def test_the_credential_error_never_holds_the_echoed_secret_or_token(
    echoing: tuple[FakeEntra, str], tmp_path: Path, kind: str
) -> None:
    fake, url = echoing
    token = _token(fake.issuer)
    fake.echo = token
    proof_file = tmp_path / "proof"
    if kind == "secret":
        auth: ClientAuth = SecretAuth(SecretStr(SECRET))
        proof = SECRET
    elif kind == "secret file":
        proof_file.write_text(SECRET + "\n")
        auth, proof = secret_file_auth(proof_file), SECRET
    else:
        proof_file.write_text(ASSERTION)
        auth, proof = federated_token_auth(proof_file), ASSERTION
    err = _refusal(url, auth)
    assert fake.calls, "the token request never reached the echoing endpoint"
    # The echo got through to the error, in redacted form: the test sees what it must hide.
    assert "Invalid client secret provided" in str(err)
    assert "[redacted]" in str(err)
    for text in _shown(err):
        assert proof not in text, text
        assert token not in text, text
        assert token.rsplit(".", 1)[1] not in text, text
    # One message: str(err) is the message, there is no second copy that escaped redaction.
    assert err.args == (str(err),)
    assert err.message == str(err)


def test_the_proxy_never_shows_the_echo_in_its_log_readyz_or_503(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    """The secret comes from a file and is rotated after startup, so the log formatter does not
    know it: only the credential's own redaction keeps it out."""
    s = fresh_stack
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(s.secret)
    del s.env["AZURE_CLIENT_SECRET"]
    s.env["AZURE_CLIENT_SECRET_FILE"] = str(secret_file)
    token = _token(s.issuer)
    s.entra.echo = token
    proxy = s.start_proxy(ready=False)
    rotated = s.secret.replace("CANARY-SECRET-", "CANARY-SECRET-rotated-")
    secret_file.write_text(rotated)
    refused = lambda: [c for c in s.entra.calls if c.status == 401]  # noqa: E731
    calls = len(refused())
    # The provider retries a refusal with backoff; a call made with the rotated secret shows
    # in the journal as a refused call made after the rewrite.
    assert wait_until(lambda: len(refused()) > calls, 30), proxy.log[-2000:]

    readyz = httpx2.get(s.url + "/readyz")
    chat = httpx2.post(s.url + "/v1/chat/completions", json=CHAT)
    assert readyz.status_code == 503
    assert chat.status_code == 503
    assert "[redacted]" in readyz.text  # the echo got this far, redacted
    proxy.stop()
    log = proxy.log
    assert "not refreshed" in log
    for text in (readyz.text, str(readyz.headers), chat.text, str(chat.headers), log):
        assert not s.leaks(text)
        assert rotated not in text
        assert rotated.removeprefix("CANARY-SECRET-rotated-")[:8] not in text
        assert token not in text


def test_check_never_prints_the_echo(fresh_stack: Stack, tmp_path: Path) -> None:
    s = fresh_stack
    token = _token(s.issuer)
    s.entra.echo = token
    keys = ("FOUNDRY_PROXY_UPSTREAM", "AZURE_AUTHORITY_HOST", "AZURE_TENANT_ID")
    values = {k: s.env[k] for k in (*keys, "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")}
    env_file = tmp_path / "check.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    result = run_proxy(["check", "--env-file", str(env_file)], clean_environment())
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert s.entra.calls, output
    assert not s.leaks(output), output
    assert token not in output
