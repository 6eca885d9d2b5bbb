"""Credentials in a query string, in every spelling a server may read as one, never go upstream
(rewrite.without_credentials, used by map_target for HTTP and WebSocket alike)."""

from __future__ import annotations

import pytest

from proxy.rewrite import map_target, without_credentials

SECRET = b"CANARY-SECRET-query"


@pytest.mark.parametrize(
    "name",
    [
        b"api-key",
        b"API-Key",
        b"api_key",
        b"apikey",
        b"api%2Dkey",
        b"api%2dkey",
        b"%61pi-key",
        b"%41%50%49%2D%4B%45%59",
        b"api%5Fkey",
        b"api-key%20",
        b"%20api-key",
        b"api-key+",
        b"api-key[]",
        b"api-key%5B%5D",
        b"api-key[0]",
        b"api%252Dkey",
        b"api%25252Dkey",
        b"api-key%3Dx",
        b"x-api-key",
        b"subscription-key",
        b"Ocp-Apim-Subscription-Key",
        b"access_token",
        b"Authorization",
    ],
)
def test_every_spelling_of_a_credential_name_is_dropped(name: bytes) -> None:
    query = b"model=dep&" + name + b"=" + SECRET + b"&x=1"
    assert without_credentials(query) == b"model=dep&x=1"
    assert without_credentials(name + b"=" + SECRET) == b""
    assert without_credentials(name) == b""  # a bare name too


def test_a_semicolon_separated_credential_takes_its_whole_part() -> None:
    assert without_credentials(b"x=1;api-key=" + SECRET + b"&y=2") == b"y=2"


def test_other_parameters_pass_unchanged() -> None:
    for query in (
        b"api-version=2024-10-21",
        b"model=gpt-4o&deployment=d",
        b"after=abc%20def&limit=10",
        b"monkey=1&keyword=2&token_count=3",
        b"a=%zz&b=%2",
        b"",
    ):
        assert without_credentials(query) == query


def test_map_target_forwards_the_query_without_credentials() -> None:
    target = map_target(b"/v1/realtime", b"model=dep&api%2Dkey=" + SECRET)
    assert target.path_qs == "/openai/v1/realtime?model=dep"
    only = map_target(b"/v1/chat/completions", b"%61pi-key=" + SECRET)
    assert only.path_qs == "/openai/v1/chat/completions"
