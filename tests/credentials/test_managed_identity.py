"""Managed identity credentials (IMDS and App Service) against the fake endpoints on loopback.

Retry timings are real but short (tenths of seconds); lower bounds are exact, upper bounds
generous because the machines are shared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx2
import pytest
from pydantic import SecretStr

from proxy.credentials.base import AccessToken
from proxy.credentials.claims import decode_claims
from proxy.credentials.managed_identity import (
    AppServiceIdentity,
    IdentitySelector,
    ImdsIdentity,
    imds_reachable,
)
from proxy.errors import AuthenticationFailed, CredentialError, CredentialUnavailable
from tests.fakes.identity import (
    SYSTEM_CLIENT_ID,
    Answer,
    FakeAppServiceIdentity,
    FakeImds,
)
from tests.fakes.serve import ServerThread, bind_loopback
from tests.fakes.tokens import RecordingIssuer

SCOPE = "https://cognitiveservices.azure.com/.default"
RESOURCE = "https://cognitiveservices.azure.com"
HEADER = "identity-header-canary-7f3a9c"
USER_ID = "0a1b2c3d-1111-2222-3333-444455556666"
SYSTEM = IdentitySelector()
FAST: dict[str, Any] = {"retry_delays": (0.05, 0.1), "gone_retry_for": 0.3}
T = TypeVar("T")


def run(call: Callable[[httpx2.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        # The production client never goes through an HTTP proxy either.
        async with httpx2.AsyncClient(trust_env=False, timeout=5.0) as http:
            return await call(http)

    return asyncio.run(main())


def fails(call: Callable[[httpx2.AsyncClient], Awaitable[object]]) -> CredentialError:
    with pytest.raises(CredentialError) as info:
        run(call)
    return info.value


def token(scripted: dict[str, str]) -> Answer:
    return Answer(200, {"access_token": "eyJhbGciOiJub25lIn0.e30.c2ln", **scripted})


@pytest.fixture
def issuer() -> RecordingIssuer:
    return RecordingIssuer()


@pytest.fixture
def imds(issuer: RecordingIssuer) -> Iterator[tuple[FakeImds, str]]:
    fake = FakeImds(issuer)
    server = ServerThread(fake.app).start()
    try:
        yield fake, server.url
    finally:
        server.stop()


@pytest.fixture
def app_service(issuer: RecordingIssuer) -> Iterator[tuple[FakeAppServiceIdentity, str]]:
    fake = FakeAppServiceIdentity(issuer, header=HEADER)
    server = ServerThread(fake.app).start()
    try:
        yield fake, server.url + fake.path
    finally:
        server.stop()


@pytest.fixture
def closed_port() -> Iterator[str]:
    """A loopback port that is bound but not listening: connections are refused at once."""
    sock = bind_loopback()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture
def silent_port() -> Iterator[str]:
    """A loopback port that accepts connections (kernel backlog) but never answers."""
    sock = bind_loopback()
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def imds_token(url: str, selector: IdentitySelector = SYSTEM, **kw: Any) -> AccessToken:
    return run(lambda http: ImdsIdentity(selector, http, endpoint=url, **kw).get_token(SCOPE))


# IMDS


def test_imds_system_assigned(imds: tuple[FakeImds, str], issuer: RecordingIssuer) -> None:
    fake, url = imds
    got = imds_token(url)
    assert 3590 < got.expires_in <= 3600
    assert issuer.verify(got.token, (RESOURCE,)) is None
    assert decode_claims(got.token)["appid"] == SYSTEM_CLIENT_ID  # type: ignore[index]
    [call] = fake.calls
    assert call.params == {"api-version": "2018-02-01", "resource": RESOURCE}
    assert call.headers["metadata"] == "true"
    assert call.status == 200


def test_imds_short_lived_token(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.token_lifetime = 1.5
    expires_in = imds_token(url).expires_in
    assert expires_in > 1.0
    assert expires_in <= 1.5


@pytest.mark.parametrize(
    ("field", "param"),
    [("client_id", "client_id"), ("object_id", "object_id"), ("resource_id", "msi_res_id")],
)
def test_imds_user_assigned_selector(imds: tuple[FakeImds, str], field: str, param: str) -> None:
    fake, url = imds
    fake.system_assigned = False
    fake.assigned = {USER_ID}
    got = imds_token(url, IdentitySelector(**{field: USER_ID}))
    assert decode_claims(got.token)["appid"] == USER_ID  # type: ignore[index]
    [call] = fake.calls
    assert call.params == {"api-version": "2018-02-01", "resource": RESOURCE, param: USER_ID}


def test_imds_prefers_expires_in_over_expires_on(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.script.append(token({"expires_in": "600", "expires_on": str(int(time.time()) + 3600)}))
    assert 599 < imds_token(url).expires_in <= 600


def test_imds_falls_back_to_expires_on(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.script.append(token({"expires_on": str(int(time.time()) + 900)}))
    assert 890 < imds_token(url).expires_in <= 900


def test_imds_410_is_retried_until_it_recovers(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.script.extend([Answer(410, {"error": "gone"})] * 3)
    start = time.monotonic()
    imds_token(url, **FAST)
    # Delays 0.05, 0.1, then the last delay again while 410 lasts under gone_retry_for.
    assert time.monotonic() - start >= 0.25
    assert [c.status for c in fake.calls] == [410, 410, 410, 200]
    assert all(c.headers["metadata"] == "true" for c in fake.calls)


def test_imds_410_gives_up_after_gone_retry_for(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.script.extend([Answer(410, {"error": "gone"})] * 50)
    start = time.monotonic()
    error = fails(lambda http: ImdsIdentity(SYSTEM, http, endpoint=url, **FAST).get_token(SCOPE))
    elapsed = time.monotonic() - start
    assert isinstance(error, CredentialUnavailable)
    assert error.code == "imds_unavailable"
    assert 0.3 <= elapsed < 2.0
    assert 4 <= len(fake.calls) < 10


@pytest.mark.parametrize("status", [404, 500, 503])
def test_imds_transient_answers_are_retried(imds: tuple[FakeImds, str], status: int) -> None:
    fake, url = imds
    fake.script.append(Answer(status, {"error": "unavailable"}))
    start = time.monotonic()
    imds_token(url, **FAST)
    assert time.monotonic() - start >= 0.05
    assert [c.status for c in fake.calls] == [status, 200]


def test_imds_429_retry_after_is_honoured(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.script.append(Answer(429, {"error": "throttled"}, (("Retry-After", "1"),)))
    start = time.monotonic()
    imds_token(url, **FAST)
    assert time.monotonic() - start >= 1.0
    assert [c.status for c in fake.calls] == [429, 200]


def test_imds_retries_run_out(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.script.extend([Answer(500, {"error": "boom"})] * 5)
    error = fails(lambda http: ImdsIdentity(SYSTEM, http, endpoint=url, **FAST).get_token(SCOPE))
    assert isinstance(error, CredentialUnavailable)
    assert error.code == "imds_unavailable"
    assert len(fake.calls) == 3


def test_imds_400_means_no_identity_and_is_not_retried(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.system_assigned = False
    error = fails(lambda http: ImdsIdentity(SYSTEM, http, endpoint=url, **FAST).get_token(SCOPE))
    assert isinstance(error, AuthenticationFailed)
    assert error.code == "identity_not_assigned"
    assert "no managed identity is assigned" in error.message
    assert "Identity not found" in error.message
    assert "AZURE_CLIENT_ID" in error.hint
    assert len(fake.calls) == 1


def test_imds_unknown_user_assigned_identity(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    selector = IdentitySelector(client_id=USER_ID)
    error = fails(lambda http: ImdsIdentity(selector, http, endpoint=url).get_token(SCOPE))
    assert isinstance(error, AuthenticationFailed)
    assert USER_ID in error.message
    assert len(fake.calls) == 1


def test_imds_403_unreachable_is_unavailable(imds: tuple[FakeImds, str]) -> None:
    fake, url = imds
    fake.script.append(
        Answer(403, raw=b"A socket operation was attempted to an unreachable network")
    )
    error = fails(lambda http: ImdsIdentity(SYSTEM, http, endpoint=url, **FAST).get_token(SCOPE))
    assert isinstance(error, CredentialUnavailable)
    assert error.code == "imds_unreachable"
    assert "not reachable from here" in error.message
    assert len(fake.calls) == 1


def test_imds_unreachable_endpoint_fails_fast(closed_port: str) -> None:
    start = time.monotonic()
    error = fails(lambda http: ImdsIdentity(SYSTEM, http, endpoint=closed_port).get_token(SCOPE))
    assert time.monotonic() - start < 1.0
    assert isinstance(error, CredentialUnavailable)
    assert error.code == "imds_unreachable"
    assert f"IMDS at {closed_port} is not reachable" in error.message


def test_imds_probe_finds_the_fake_without_minting(
    imds: tuple[FakeImds, str], issuer: RecordingIssuer
) -> None:
    fake, url = imds
    assert run(lambda http: imds_reachable(http, url))
    [call] = fake.calls
    assert call.status == 400
    assert "resource" not in call.params
    assert call.headers["metadata"] == "true"
    assert not issuer.issued


@pytest.mark.parametrize(
    "answer",
    [
        # Another cloud's metadata service on the same address.
        Answer(404, raw=b"<html><body>404 - Not Found</body></html>"),
        # Docker Desktop's answer for 169.254.169.254.
        Answer(403, {"error": "A socket operation was attempted to an unreachable network."}),
        Answer(200, raw=b"ami-id\ninstance-id\n"),
    ],
)
def test_imds_probe_ignores_what_is_not_azure_imds(
    imds: tuple[FakeImds, str], answer: Answer
) -> None:
    fake, url = imds
    fake.script.append(answer)
    assert not run(lambda http: imds_reachable(http, url))


@pytest.mark.parametrize("port", ["closed_port", "silent_port"])
def test_imds_probe_says_no_quickly(request: pytest.FixtureRequest, port: str) -> None:
    url = request.getfixturevalue(port)
    start = time.monotonic()
    assert not run(lambda http: imds_reachable(http, url, timeout=0.5))
    assert time.monotonic() - start < 1.5


# App Service


def app_service_token(
    url: str, selector: IdentitySelector = SYSTEM, header: str = HEADER
) -> AccessToken:
    return run(
        lambda http: AppServiceIdentity(url, SecretStr(header), selector, http).get_token(SCOPE)
    )


def test_app_service_system_assigned(
    app_service: tuple[FakeAppServiceIdentity, str], issuer: RecordingIssuer
) -> None:
    fake, url = app_service
    got = app_service_token(url)
    # The fake, like the real endpoint, sends only expires_on.
    assert 3590 < got.expires_in <= 3600
    assert issuer.verify(got.token, (RESOURCE,)) is None
    [call] = fake.calls
    assert call.params == {"api-version": "2019-08-01", "resource": RESOURCE}
    assert call.headers["x-identity-header"] == HEADER
    assert call.status == 200


@pytest.mark.parametrize(
    ("field", "param"),
    [("client_id", "client_id"), ("object_id", "object_id"), ("resource_id", "mi_res_id")],
)
def test_app_service_user_assigned_selector(
    app_service: tuple[FakeAppServiceIdentity, str], field: str, param: str
) -> None:
    fake, url = app_service
    fake.system_assigned = False
    fake.assigned = {USER_ID}
    got = app_service_token(url, IdentitySelector(**{field: USER_ID}))
    assert decode_claims(got.token)["appid"] == USER_ID  # type: ignore[index]
    [call] = fake.calls
    assert call.params == {"api-version": "2019-08-01", "resource": RESOURCE, param: USER_ID}


def test_app_service_wrong_header(app_service: tuple[FakeAppServiceIdentity, str]) -> None:
    fake, url = app_service
    wrong = "wrong-header-canary-1b2c"
    error = fails(
        lambda http: AppServiceIdentity(url, SecretStr(wrong), SYSTEM, http).get_token(SCOPE)
    )
    assert isinstance(error, AuthenticationFailed)
    assert error.code == "identity_header_rejected"
    assert wrong not in str(error)
    assert HEADER not in str(error)
    assert [c.status for c in fake.calls] == [401]


def test_app_service_never_repeats_the_header(
    app_service: tuple[FakeAppServiceIdentity, str],
) -> None:
    fake, url = app_service
    # Something between us and the platform echoes what it was sent.
    fake.script.append(Answer(403, {"message": f"header {HEADER} not accepted"}))
    error = fails(
        lambda http: AppServiceIdentity(url, SecretStr(HEADER), SYSTEM, http).get_token(SCOPE)
    )
    assert isinstance(error, AuthenticationFailed)
    assert HEADER not in str(error)
    assert HEADER not in error.message
    assert "[redacted]" in error.message


def test_app_service_identity_not_assigned(
    app_service: tuple[FakeAppServiceIdentity, str],
) -> None:
    fake, url = app_service
    fake.system_assigned = False
    error = fails(
        lambda http: AppServiceIdentity(url, SecretStr(HEADER), SYSTEM, http).get_token(SCOPE)
    )
    assert isinstance(error, AuthenticationFailed)
    assert error.code == "identity_not_assigned"
    assert "AZURE_CLIENT_ID" in error.hint


@pytest.mark.parametrize("status", [404, 429, 500, 503])
def test_app_service_transient_answers(
    app_service: tuple[FakeAppServiceIdentity, str], status: int
) -> None:
    fake, url = app_service
    fake.script.append(Answer(status, {"message": "busy"}, (("Retry-After", "7"),)))
    error = fails(
        lambda http: AppServiceIdentity(url, SecretStr(HEADER), SYSTEM, http).get_token(SCOPE)
    )
    assert isinstance(error, CredentialUnavailable)
    assert error.code == "identity_endpoint_unavailable"
    assert error.retry_after == 7.0


def test_app_service_unreachable(closed_port: str) -> None:
    error = fails(
        lambda http: AppServiceIdentity(
            closed_port + "/msi/token", SecretStr(HEADER), SYSTEM, http
        ).get_token(SCOPE)
    )
    assert isinstance(error, CredentialUnavailable)
    assert error.code == "identity_endpoint_unreachable"
    assert HEADER not in str(error)


# Malformed answers, from either endpoint


MALFORMED = {
    "no token": Answer(200, {"expires_on": str(int(time.time()) + 3600)}),
    "expired": Answer(200, {"access_token": "x.y.z", "expires_on": str(int(time.time()) - 60)}),
    "no expiry": Answer(200, {"access_token": "x.y.z"}),
    "absurd expiry": Answer(200, {"access_token": "x.y.z", "expires_on": "99999999999"}),
    "not a number": Answer(200, {"access_token": "x.y.z", "expires_on": "tomorrow"}),
    "not JSON": Answer(200, raw=b"<html>captive portal</html>"),
}


@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_answers(
    imds: tuple[FakeImds, str],
    app_service: tuple[FakeAppServiceIdentity, str],
    answer: Answer,
) -> None:
    imds[0].script.append(answer)
    app_service[0].script.append(answer)
    for call in (
        lambda http: ImdsIdentity(SYSTEM, http, endpoint=imds[1]).get_token(SCOPE),
        lambda http: AppServiceIdentity(app_service[1], SecretStr(HEADER), SYSTEM, http).get_token(
            SCOPE
        ),
    ):
        error = fails(call)
        assert isinstance(error, CredentialUnavailable)
        assert error.code == "malformed_token_response"
    assert len(imds[0].calls) == len(app_service[0].calls) == 1


def test_expired_token_blames_the_clock(app_service: tuple[FakeAppServiceIdentity, str]) -> None:
    fake, url = app_service
    fake.script.append(MALFORMED["expired"])
    error = fails(
        lambda http: AppServiceIdentity(url, SecretStr(HEADER), SYSTEM, http).get_token(SCOPE)
    )
    assert "clock" in error.message


# The selector


def test_selector_takes_at_most_one_id() -> None:
    with pytest.raises(ValueError, match="client id and resource id"):
        IdentitySelector(client_id="a", resource_id="b")


def test_selector_describes_itself() -> None:
    assert SYSTEM.describe() == "system-assigned"
    assert IdentitySelector(client_id=USER_ID).describe() == f"user-assigned (client id {USER_ID})"
    assert IdentitySelector(resource_id="/subscriptions/s").describe() == (
        "user-assigned (resource id /subscriptions/s)"
    )


def test_credentials_leave_the_client_open(imds: tuple[FakeImds, str]) -> None:
    async def check(http: httpx2.AsyncClient) -> bool:
        await ImdsIdentity(SYSTEM, http, endpoint=imds[1]).aclose()
        await AppServiceIdentity("http://x", SecretStr(HEADER), SYSTEM, http).aclose()
        return http.is_closed

    assert not run(check)


def test_kinds() -> None:
    assert ImdsIdentity.kind == "managed identity (IMDS)"
    assert AppServiceIdentity.kind == "managed identity (App Service)"
