"""Path mapping and header filtering: examples plus hypothesis properties (C27, C28, B15-B20)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.rewrite import (
    HOP_BY_HOP,
    BadTarget,
    map_target,
    request_headers,
    response_headers,
)


@pytest.mark.parametrize(
    ("raw", "query", "expected", "projects"),
    [
        (b"/v1/chat/completions", b"", "/openai/v1/chat/completions", False),
        (
            b"/openai/deployments/d/chat/completions",
            b"api-version=2024-10-21",
            "/openai/deployments/d/chat/completions?api-version=2024-10-21",
            False,
        ),
        (b"/openai/v1/models", b"", "/openai/v1/models", False),
        (
            b"/models/chat/completions",
            b"api-version=2024-05-01-preview",
            "/models/chat/completions?api-version=2024-05-01-preview",
            False,
        ),
        (b"/api/projects/p/openai/v1/responses", b"", "/api/projects/p/openai/v1/responses", True),
        (b"/v1/files/file-abc%20def", b"", "/openai/v1/files/file-abc%20def", False),
        # Claude: Anthropic(base_url=proxy/anthropic); the token is for https://ai.azure.com.
        (b"/anthropic/v1/messages", b"beta=true", "/anthropic/v1/messages?beta=true", True),
    ],
)
def test_mapping(raw: bytes, query: bytes, expected: str, projects: bool) -> None:
    target = map_target(raw, query)
    assert target.path_qs == expected
    assert target.projects is projects


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"/", 404),
        (b"/v2/x", 404),
        (b"/V1/models", 404),
        (b"/openaix/v1", 404),
        (b"http://evil/v1/x", 404),
        (b"/v1//x", 400),
        (b"/v1/./x", 400),
        (b"/v1/a/../../x", 400),
        (b"/v1/x/..", 400),
        (b"/v1/%2e%2e/x", 400),
        (b"/v1/%2E/x", 400),
        (b"/v1/a%2fb", 400),
        (b"/v1/a%5Cb", 400),
        (b"/v1/a%252fb", 400),
        (b"/v1/a%00b", 400),
        (b"/v1/a%zz", 400),
        (b"/v1/a%2", 400),
        (b"/v1/..;/x", 400),
        (b"/v1/a/.;/x", 400),
        (b"/v1/%C0%AE%C0%AE/x", 400),
        (b"/v1/caf%C3%A9", 400),
        (b"/v1/a\\b", 400),
        (b"/v1/a b", 400),
        (b"/v1/\xc3\xa9", 400),
        (b"/v1/a#b", 400),
        (b"/v1/models/", 400),
        (b"/anthropic", 404),
        (b"/anthropic/v1/%2e%2e/x", 400),
        (b"/anthropic/../openai/v1/files", 400),
    ],
)
def test_rejections(raw: bytes, status: int) -> None:
    with pytest.raises(BadTarget) as info:
        map_target(raw, b"")
    assert info.value.status == status


def test_query_with_illegal_bytes_is_rejected() -> None:
    for query in (b"a=b c", b"a=\x00", b"a=b#frag", b"a=\xff"):
        with pytest.raises(BadTarget):
            map_target(b"/v1/models", query)


_PREFIXES = ("/openai/v1/", "/openai/", "/models/", "/api/projects/", "/anthropic/")
_DOT_OR_SLASH_ESCAPE = re.compile(r"%(2[eEfF5]|5[cC])")


@given(st.binary(max_size=80), st.binary(max_size=40))
def test_no_target_ever_escapes_the_route_families(raw: bytes, query: bytes) -> None:
    """Whatever the bytes, a mapped path stays under a route family, with no traversal."""
    try:
        target = map_target(b"/v1/" + raw, query)
    except BadTarget:
        return
    path = target.path_qs.split("?", 1)[0]
    assert path.startswith(_PREFIXES)
    assert "//" not in path
    assert "\\" not in path
    segments = path.split("/")[1:]
    assert "." not in segments
    assert ".." not in segments
    assert not _DOT_OR_SLASH_ESCAPE.search(path)
    # The string checked is the string sent: the path is the input with only the prefix swapped.
    assert path == "/openai/v1/" + raw.decode("ascii")


@given(
    st.sampled_from([b"/v1/", b"/openai/", b"/models/", b"/api/projects/", b"/anthropic/"]),
    st.text("abc./%2eEfF5cC", max_size=30),
)
def test_dot_and_escape_combinations(prefix: bytes, tail: str) -> None:
    try:
        target = map_target(prefix + tail.encode(), b"")
    except BadTarget:
        return
    segments = target.path_qs.split("/")
    assert "." not in segments
    assert ".." not in segments
    assert not _DOT_OR_SLASH_ESCAPE.search(target.path_qs)


_names = st.sampled_from(
    [
        b"authorization",
        b"api-key",
        b"host",
        b"connection",
        b"te",
        b"upgrade",
        b"cookie",
        b"x-forwarded-for",
        b"content-length",
        b"x-custom",
        b"user-agent",
        b"x-ms-client-request-id",
        b"proxy-authorization",
        b"transfer-encoding",
        b"keep-alive",
        b"ocp-apim-subscription-key",
        b"x-api-key",
        b"anthropic-version",
    ]
)
_values = st.sampled_from([b"1", b"x-custom", b"close, x-custom", b"keep-alive", b"gzip"])


@given(st.lists(st.tuples(_names, _values), max_size=12))
def test_request_headers_never_carry_credentials_or_hop_by_hop(
    raw: list[tuple[bytes, bytes]],
) -> None:
    # Well-framed requests only (framing errors have their own tests): one Host, at most one
    # Transfer-Encoding and it chunked, numeric Content-Length.
    framed: list[tuple[bytes, bytes]] = [(b"host", b"127.0.0.1:8787")]
    for name, value in raw:
        if name == b"transfer-encoding":
            if any(n == name for n, _ in framed):
                continue
            value = b"chunked"
        elif name == b"content-length":
            value = b"5"
        if name != b"host":
            framed.append((name, value))
    raw = framed
    names_in = {n for n, _ in raw}
    if {b"content-length", b"transfer-encoding"} <= names_in:
        with pytest.raises(BadTarget):  # docs/security.md, A1: both framings at once are refused
            request_headers(raw)
        return
    out = request_headers(raw).headers
    names = {n.encode() for n, _ in out}
    assert not names & HOP_BY_HOP
    assert not names & {
        b"authorization",
        b"api-key",
        b"host",
        b"cookie",
        b"proxy-authorization",
        b"ocp-apim-subscription-key",
        b"x-api-key",
        b"content-length",
    }
    assert not any(n.startswith(b"x-forwarded-") for n in names)
    listed = {t.strip() for n, v in raw if n == b"connection" for t in v.split(b",")}
    assert not names & listed


def test_request_headers_report_what_the_proxy_checks() -> None:
    inbound = request_headers(
        [
            (b"content-length", b"42"),
            (b"host", b"localhost:8787"),
            (b"origin", b"https://evil.example"),
            (b"sec-fetch-site", b"cross-site"),
            (b"x-note", "café".encode()),
        ]
    )
    assert inbound.length == 42
    assert inbound.host == "localhost:8787"
    assert inbound.origin == "https://evil.example"
    assert inbound.cross_site
    # UTF-8 in, the same text out (aiohttp encodes header values as UTF-8 again).
    assert ("x-note", "café") in inbound.headers
    with pytest.raises(BadTarget):
        request_headers([(b"content-length", b"-1")])
    with pytest.raises(BadTarget):
        request_headers([(b"x-bad", b"\xff\xfe")])


def test_anthropic_headers_pass_and_its_key_is_a_presented_key() -> None:
    inbound = request_headers(
        [
            (b"host", b"127.0.0.1:8787"),
            (b"x-api-key", b"local-key"),
            (b"anthropic-version", b"2023-06-01"),
            (b"anthropic-beta", b"prompt-caching-2024-07-31"),
        ]
    )
    assert inbound.presented == ["local-key"]
    assert ("anthropic-version", "2023-06-01") in inbound.headers
    assert ("anthropic-beta", "prompt-caching-2024-07-31") in inbound.headers
    assert not any(name == "x-api-key" for name, _ in inbound.headers)


def test_bodyless_statuses_lose_content_length() -> None:
    raw = [(b"content-length", b"12"), (b"etag", b"x")]
    assert response_headers(raw, 304) == [(b"etag", b"x")]
    assert response_headers(raw, 200) == raw


def test_response_headers() -> None:
    raw = [
        (b"Content-Type", b"application/json"),
        (b"Connection", b"X-Hop"),
        (b"X-Hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Set-Cookie", b"a=b"),
        (b"Retry-After", b"3"),
        (b"x-ratelimit-remaining-tokens", b"10"),
    ]
    assert response_headers(raw) == [
        (b"content-type", b"application/json"),
        (b"retry-after", b"3"),
        (b"x-ratelimit-remaining-tokens", b"10"),
    ]
