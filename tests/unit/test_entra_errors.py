from __future__ import annotations

import pytest

from proxy.credentials.base import parse_token_response
from proxy.credentials.entra_errors import error_from_response, parse_retry_after
from proxy.errors import AuthenticationFailed, CredentialUnavailable


def body(error: str, code: int) -> dict[str, object]:
    return {
        "error": error,
        "error_description": f"AADSTS{code}: Something.\r\nTrace ID: t\r\nCorrelation ID: c",
        "error_codes": [code],
        "trace_id": "t",
        "correlation_id": "c",
    }


@pytest.mark.parametrize(
    ("status", "error", "code", "permanent", "hint"),
    [
        (401, "invalid_client", 7000215, True, "Secret ID"),
        (401, "invalid_client", 7000222, True, "expired"),
        (400, "unauthorized_client", 700016, True, "not found in tenant"),
        (400, "invalid_request", 90002, True, "tenant"),
        (400, "invalid_request", 90038, True, "national cloud"),
        (400, "invalid_scope", 70011, True, "scope"),
        (400, "invalid_resource", 500011, True, "resource"),
        (400, "invalid_grant", 53003, True, "Conditional Access"),
        (429, "temporarily_unavailable", 90055, False, "throttling"),
        (503, "temporarily_unavailable", 90033, False, ""),
    ],
)
def test_classification(status: int, error: str, code: int, permanent: bool, hint: str) -> None:
    err = error_from_response(status, body(error, code), None)
    assert err.permanent is permanent
    assert isinstance(err, AuthenticationFailed if permanent else CredentialUnavailable)
    assert err.code == f"AADSTS{code}"
    assert err.message == f"AADSTS{code}: Something."  # first line only: no trace ids
    assert hint in err.hint


def test_non_json_errors() -> None:
    err = error_from_response(502, None, 12.0)
    assert not err.permanent
    assert err.code == "http_502"
    assert err.retry_after == 12.0


def test_retry_after_forms() -> None:
    assert parse_retry_after("20") == 20.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        {"expires_in": 3600},
        {"access_token": "", "expires_in": 3600},
        {"access_token": "t", "expires_in": 0},
        {"access_token": "t", "expires_in": -5},
        {"access_token": "t", "expires_in": 1e12},
        {"access_token": "t", "expires_in": "soon"},
        {"access_token": "t", "expires_in": True},
    ],
)
def test_malformed_token_answers(answer: object) -> None:
    with pytest.raises(CredentialUnavailable):
        parse_token_response(answer)


def test_string_numbers_and_refresh_in() -> None:
    token = parse_token_response({"access_token": "t", "expires_in": "3599", "refresh_in": 1800})
    assert (token.expires_in, token.refresh_in) == (3599.0, 1800.0)
    assert "t" not in repr(token).replace("AccessToken", "").replace("expires", "").replace(
        "refresh_in", ""
    )
