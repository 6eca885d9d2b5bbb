"""redaction.py: what may be shown, and the one-message CredentialError built on it."""

from __future__ import annotations

import traceback
from urllib.parse import quote, quote_plus

import pytest

from proxy.credentials.entra_errors import error_from_response
from proxy.errors import AuthenticationFailed, CredentialError
from proxy.redaction import (
    MAX_MESSAGE,
    REDACTED,
    Redactor,
    one_line,
    redact,
    redact_headers,
    safe_message,
)

SECRET = "s3cr3t/with+odd&chars=="
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2NvZ25pdGl2ZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl"


@pytest.mark.parametrize("form", [SECRET, quote(SECRET, safe=""), quote_plus(SECRET)])
def test_a_known_secret_goes_in_every_form_it_is_echoed_in(form: str) -> None:
    assert redact(f"you sent {form}.", [SECRET]) == f"you sent {REDACTED}."


def test_the_longest_secret_goes_first_and_short_ones_are_not_secrets() -> None:
    assert redact("abcdefgh", ["abcd", "abcdefgh"]) == REDACTED
    # Three characters would blank out ordinary words.
    assert redact("the cat", ["cat"]) == "the cat"


@pytest.mark.parametrize(
    "token",
    [
        JWT,
        JWT.rsplit(".", 1)[0],  # header and claims only
        JWT.rsplit(".", 1)[0] + ".",
        JWT[:40],  # cut short by whoever echoed it
    ],
)
def test_token_shapes_go_whole_or_cut(token: str) -> None:
    text = redact(f"got {token} back")
    assert text == f"got {REDACTED} back"


def test_shapes_keep_the_name_and_drop_the_value() -> None:
    assert redact("Authorization: Bearer abc.def") == f"Authorization: {REDACTED}"
    assert redact("x Bearer abc.def") == f"x Bearer {REDACTED}"
    assert redact("('authorization', b'Basic dXNlcg==')") == f"('authorization', b'{REDACTED}')"
    assert redact("grant client_secret=xyz&scope=s") == f"grant client_secret={REDACTED}&scope=s"
    assert redact('{"refresh_token": "r1"}') == '{"refresh_token": "' + REDACTED + '"}'
    assert redact("realtime, openai-insecure-api-key.sk-1") == (
        f"realtime, openai-insecure-api-key.{REDACTED}"
    )
    assert redact("nothing secret here: 42") == "nothing secret here: 42"


def test_one_line_takes_the_first_line_without_colours_or_controls() -> None:
    assert one_line("\n  \x1b[91mERROR: bad\x1b[0m  \r\nTrace ID: t") == "ERROR: bad"
    assert one_line("a\x00b\x1bc") == "a b c"
    assert one_line("") == ""
    long = one_line("x" * 1000)
    assert len(long) == MAX_MESSAGE
    assert long.endswith("…")
    assert one_line("x" * 50, limit=10) == "x" * 9 + "…"


def test_safe_message_redacts_before_it_cuts() -> None:
    """A secret or token across the cut must not leave its first half behind."""
    for hidden, secrets in ((SECRET, [SECRET]), (JWT, [])):
        text = "x" * (MAX_MESSAGE - 10) + hidden + " tail"
        shown = safe_message(text, secrets)
        assert len(shown) <= MAX_MESSAGE
        assert hidden[:8] not in shown
        assert REDACTED[:9] in shown
    assert safe_message(f"first {SECRET}\nsecond {SECRET}", [SECRET]) == f"first {REDACTED}"


def test_header_maps_show_only_harmless_values() -> None:
    headers = [
        ("Content-Type", "application/json"),
        (b"x-request-id", b"r-1"),
        ("x-functions-key", "fk"),
        ("x-auth-token", "at"),
        ("token", "t"),
        (b"X-Client-Secret", b"cs"),
        ("sec-websocket-protocol", "realtime, openai-insecure-api-key.sk-1"),
    ]
    assert redact_headers(headers) == [
        ("Content-Type", "application/json"),
        ("x-request-id", "r-1"),
        ("x-functions-key", REDACTED),
        ("x-auth-token", REDACTED),
        ("token", REDACTED),
        ("X-Client-Secret", REDACTED),
        ("sec-websocket-protocol", REDACTED),
    ]


def test_a_redactor_is_built_once_and_reused() -> None:
    redactor = Redactor.of([SECRET])
    assert redactor(f"a {SECRET} b {JWT}") == f"a {REDACTED} b {REDACTED}"
    assert redactor(f"c {quote_plus(SECRET)}") == f"c {REDACTED}"


# -- CredentialError: one message, already safe --------------------------------------------------


def _shown(err: BaseException) -> list[str]:
    return [str(err), repr(err), "".join(traceback.format_exception(err))]


def test_a_credential_error_keeps_one_redacted_message() -> None:
    err = CredentialError(
        f"refused {SECRET} with {JWT}",
        code=f"bad {SECRET}",
        correlation_id=SECRET,
        secrets=[SECRET],
    )
    assert err.args == (f"refused {REDACTED} with {REDACTED}",)
    assert err.message == str(err)
    assert err.code == f"bad {REDACTED}"
    assert err.correlation_id == REDACTED
    for text in _shown(err):
        assert SECRET not in text
        assert JWT[:20] not in text
    with pytest.raises(AttributeError):
        err.message = "a second copy"  # type: ignore[misc]


def test_shapes_are_redacted_even_without_known_secrets() -> None:
    err = AuthenticationFailed(f"gateway sent {JWT}; Authorization: Bearer {JWT}")
    assert str(err) == f"gateway sent {REDACTED}; Authorization: {REDACTED}"


def test_an_entra_shaped_refusal_echoing_the_secret() -> None:
    body = {
        "error": "invalid_client",
        "error_description": "AADSTS7000215: Invalid client secret provided: "
        + "y" * (MAX_MESSAGE - 60)
        + SECRET
        + "\r\nTrace ID: t",
        "error_codes": [7000215],
        "correlation_id": f"c {SECRET}",
    }
    err = error_from_response(401, body, None, secrets=[SECRET])
    assert isinstance(err, AuthenticationFailed)
    assert err.code == "AADSTS7000215"
    assert "Secret ID" in err.hint
    assert err.message.startswith("AADSTS7000215: Invalid client secret provided: yyy")
    assert "Trace ID" not in err.message
    assert err.correlation_id == f"c {REDACTED}"
    for text in _shown(err):
        assert SECRET[:8] not in text
