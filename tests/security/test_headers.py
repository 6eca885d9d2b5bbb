"""Header rules, checked against what the upstream saw: docs/security.md section B (B15-B26).

Request-side cases run against the fake Foundry and its journal; response-side cases (B20-B22)
against ``ScriptedUpstream``, which plays hop-by-hop fields, gzip with Content-Length and
cookies. Every case also checks that nothing reached the evil listeners and the proxy is alive.
"""

from __future__ import annotations

import hashlib
import json

import httpx2
import pytest

from tests.e2e.stack import Stack
from tests.fakes.evil import GZIP_BODY, EvilListeners, ScriptedUpstream
from tests.fakes.foundry import Entry
from tests.security.support import assert_clean_answer, assert_healthy, proxy_log_lines
from tests.support.chat import chat_body
from tests.support.rawsock import Exchange, exchange, request

pytestmark = pytest.mark.e2e

MODELS = "/openai/v1/models"


def send(
    stack: Stack, evil: EvilListeners, data: bytes | list[bytes], **kw: object
) -> tuple[Exchange, list[Entry]]:
    """Raw request -> (what came back, what the upstream saw), with the common invariants."""
    assert stack.proxy is not None
    before = len(stack.foundry.journal)
    log_from = proxy_log_lines(stack)
    ex = exchange(stack.proxy.port, data, **kw)  # type: ignore[arg-type]
    assert_healthy(stack, evil, log_from)
    assert_clean_answer(stack, ex)
    return ex, stack.foundry.journal[before:]


def upstream_authority(stack: Stack) -> str:
    return stack.foundry_server.url.removeprefix("http://")


def assert_proxy_bearer(stack: Stack, entry: Entry) -> None:
    """Exactly one Authorization upstream, and it is the proxy's own Entra token."""
    assert entry.token_serial is not None
    assert entry.header("authorization") == ["Bearer " + stack.issuer.token(entry.token_serial)]


# -- B15: hop-by-hop ------------------------------------------------------------------------------

HOP = ("connection", "keep-alive", "te", "trailer", "upgrade", "proxy-connection")


def test_b15_hop_by_hop_headers_never_reach_the_upstream(stack: Stack, evil: EvilListeners) -> None:
    """B15: Connection and the fields it names, Keep-Alive, TE, Trailer, Upgrade,
    Proxy-Connection and Proxy-Authorization stay on the client's hop; Host is the upstream's."""
    ex, seen = send(
        stack,
        evil,
        request(
            "GET /v1/models HTTP/1.1",
            "Connection: keep-alive, Upgrade, X-C",
            "X-C: listed-in-connection",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Trailer: X-T",
            "Upgrade: foo/1",
            "Proxy-Connection: keep-alive",
            "Proxy-Authorization: Basic cHJveHk6c2VjcmV0",
            "X-Keep: kept",
        ),
    )
    assert ex.statuses == [200]
    (entry,) = seen
    names = {k for k, _ in entry.headers}
    assert names.isdisjoint({*HOP, "x-c", "proxy-authorization"}), names
    assert entry.header("x-keep") == ["kept"]
    assert entry.header("host") == [upstream_authority(stack)]
    assert_proxy_bearer(stack, entry)


def test_b15_hop_by_hop_headers_on_a_request_with_a_body(stack: Stack, evil: EvilListeners) -> None:
    """B15: the same on a POST (no Upgrade, so the body is read as usual)."""
    body = chat_body()
    ex, seen = send(
        stack,
        evil,
        request(
            "POST /v1/chat/completions HTTP/1.1",
            "Connection: close, X-C, Keep-Alive",
            "X-C: 1",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Proxy-Connection: close",
            "Proxy-Authorization: Basic cHJveHk6c2VjcmV0",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            body=body,
        ),
    )
    assert ex.statuses == [200]
    (entry,) = seen
    names = {k for k, _ in entry.headers}
    assert names.isdisjoint({*HOP, "x-c", "proxy-authorization"}), names
    assert entry.body_sha256 == hashlib.sha256(body).hexdigest()


# -- B16 / B17: credentials ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        ("Connection: close, Authorization", "Authorization: Bearer CLIENT-CRED-b16a"),
        ("Connection: api-key", "api-key: CLIENT-CRED-b16b"),
        ("Connection: Authorization", "Authorization: Bearer CLIENT-CRED-b16c"),
    ],
    ids=["close-authorization", "api-key", "authorization-only"],
)
def test_b16_strip_before_inject(
    stack: Stack, evil: EvilListeners, headers: tuple[str, ...]
) -> None:
    """B16: naming Authorization or api-key in Connection neither removes the proxy's token
    nor lets the client's through: exactly one Authorization, the proxy's."""
    ex, seen = send(stack, evil, request("GET /v1/models HTTP/1.1", *headers), linger=0.2)
    assert ex.statuses == [200]
    (entry,) = seen
    assert_proxy_bearer(stack, entry)
    assert not any("CLIENT-CRED" in v for _, v in entry.headers)


@pytest.mark.parametrize(
    "header",
    [
        "Authorization: Bearer CLIENT-CRED-bearer",
        "Authorization: Basic Q0xJRU5ULUNSRUQtYmFzaWM6eA==",
        "AUTHORIZATION: Bearer CLIENT-CRED-upper",
        "api-key: CLIENT-CRED-api-key",
        "API-Key: CLIENT-CRED-api-key-mixed",
        "api_key: CLIENT-CRED-underscore",
        "Ocp-Apim-Subscription-Key: CLIENT-CRED-apim",
        "x-api-key: CLIENT-CRED-x-api-key",
        "Cookie: session=CLIENT-CRED-cookie",
    ],
)
def test_b17_client_credentials_are_never_forwarded(
    stack: Stack, evil: EvilListeners, header: str
) -> None:
    """B17: Authorization, api-key, api_key, Ocp-Apim-Subscription-Key, x-api-key and Cookie
    from the client never reach the upstream; the only Authorization is the proxy's token."""
    ex, seen = send(stack, evil, request("GET /v1/models HTTP/1.1", header, "Connection: close"))
    assert ex.statuses == [200]
    (entry,) = seen
    names = {k for k, _ in entry.headers}
    assert names.isdisjoint(
        {"api-key", "api_key", "ocp-apim-subscription-key", "x-api-key", "cookie"}
    )
    assert_proxy_bearer(stack, entry)
    assert not any("CLIENT-CRED" in v for _, v in entry.headers)
    assert "Q0xJRU5ULUNSRUQtYmFzaWM6eA" not in str(entry.headers)


def test_b17_all_client_credentials_at_once(stack: Stack, evil: EvilListeners) -> None:
    """B17: all of them together, twice each."""
    creds = [
        "Authorization: Bearer CLIENT-CRED-1",
        "Authorization: Bearer CLIENT-CRED-2",
        "api-key: CLIENT-CRED-3",
        "api-key: CLIENT-CRED-4",
        "api_key: CLIENT-CRED-5",
        "Ocp-Apim-Subscription-Key: CLIENT-CRED-6",
        "x-api-key: CLIENT-CRED-7",
        "Cookie: a=CLIENT-CRED-8",
        "Cookie: b=CLIENT-CRED-9",
    ]
    ex, seen = send(stack, evil, request("GET /v1/models HTTP/1.1", *creds, "Connection: close"))
    assert ex.statuses == [200]
    (entry,) = seen
    assert_proxy_bearer(stack, entry)
    assert not any("CLIENT-CRED" in v for _, v in entry.headers)


# -- B18: forwarding and override headers ---------------------------------------------------------

FORWARDING = [
    "X-Forwarded-For: 10.0.0.1",
    "X-Forwarded-Host: 127.0.0.2",
    "X-Forwarded-Proto: http",
    "X-Forwarded-Port: 1",
    "X-Forwarded-Prefix: /openai/files",
    "X-Forwarded-Uri: /openai/files",
    "Forwarded: for=10.0.0.1;host=127.0.0.2;proto=http",
    "X-Original-URL: /openai/files",
    "X-Rewrite-URL: /openai/files",
    "X-HTTP-Method-Override: DELETE",
    "X-HTTP-Method: DELETE",
    "X-Method-Override: DELETE",
    "X-Envoy-Original-Path: /openai/files",
    "X-Envoy-Internal: true",
    "X-Real-IP: 10.0.0.1",
]


@pytest.mark.parametrize("header", FORWARDING, ids=[h.split(":")[0] for h in FORWARDING])
def test_b18_forwarding_and_override_headers_are_stripped(
    stack: Stack, evil: EvilListeners, header: str
) -> None:
    """B18: X-Forwarded-*, Forwarded, X-Original-URL, X-Rewrite-URL, method overrides and
    X-Envoy-* are dropped, and change neither the method nor the path that is sent."""
    ex, seen = send(stack, evil, request("GET /v1/models HTTP/1.1", header, "Connection: close"))
    assert ex.statuses == [200]
    (entry,) = seen
    name = header.split(":")[0].lower()
    assert entry.header(name) == []
    assert (entry.method, entry.raw_path) == ("GET", MODELS)
    assert entry.header("host") == [upstream_authority(stack)]


# -- B19: framing ------------------------------------------------------------------------------


def _one_framing(entry: Entry) -> None:
    cl, te = entry.header("content-length"), entry.header("transfer-encoding")
    assert len(cl) + len(te) == 1, f"upstream framing: CL {cl}, TE {te}"
    if cl:
        assert int(cl[0]) == entry.body_len
    else:
        assert te == ["chunked"]


def _chunks(body: bytes, size: int) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"


BIG = bytes(range(256)) * 1200  # 300 KiB: above the replay buffer, so the body streams


@pytest.mark.parametrize(
    ("framing", "body", "upstream_framing"),
    [
        ("content-length", b'{"a": 1}', "content-length"),
        # Read whole (it fits the replay buffer), so its length is known.
        ("chunked", b'{"a": 1}', "content-length"),
        ("content-length", BIG, "content-length"),
        # Streamed before its end is seen: its length is not known.
        ("chunked", BIG, "transfer-encoding"),
    ],
    ids=["cl-small", "chunked-small", "cl-streamed", "chunked-streamed"],
)
def test_b19_client_framing_is_never_copied(
    stack: Stack, evil: EvilListeners, framing: str, body: bytes, upstream_framing: str
) -> None:
    """B19: the client's CL/TE are not copied; the upstream gets one framing header that
    matches the bytes it received (a length whenever the proxy knows it), and those are the
    client's bytes."""
    if framing == "chunked":
        head = request(
            "POST /v1/uploads/b19 HTTP/1.1", "Transfer-Encoding: chunked", "Connection: close"
        )
        encoded = _chunks(body, 64 * 1024)
    else:
        head = request(
            "POST /v1/uploads/b19 HTTP/1.1", f"Content-Length: {len(body)}", "Connection: close"
        )
        encoded = body
    pieces = [head] + [encoded[i : i + 100_000] for i in range(0, len(encoded), 100_000)]
    ex, seen = send(stack, evil, pieces, pause=0.1)
    assert ex.statuses == [200]
    (entry,) = seen
    assert entry.body_len == len(body)
    assert entry.header(upstream_framing), "upstream framing is not " + upstream_framing
    assert entry.body_sha256 == hashlib.sha256(body).hexdigest()
    _one_framing(entry)


# -- B20-B22: the response side (scripted upstream) -----------------------------------------------


def test_b20_response_hop_by_hop_and_cookies_are_stripped(
    scripted: tuple[Stack, ScriptedUpstream], evil: EvilListeners
) -> None:
    """B20: upstream Connection (and the X-S it names), Keep-Alive, Transfer-Encoding, Upgrade,
    Proxy-Authenticate, Trailer, Set-Cookie and Alt-Svc are dropped; Retry-After,
    x-ratelimit-*, apim-request-id, x-request-id and Content-Type pass."""
    stack, upstream = scripted
    assert stack.proxy is not None
    ex = exchange(stack.proxy.port, request("GET /v1/x/hop HTTP/1.1", "Connection: close"))
    assert_healthy(stack, evil)
    assert_clean_answer(stack, ex)
    (response,) = ex.responses
    assert response.status == 200
    names = [k for k, _ in response.headers]
    for dropped in (b"x-s", b"keep-alive", b"upgrade", b"proxy-authenticate", b"trailer"):
        assert dropped not in names, dropped
    for dropped in (b"set-cookie", b"alt-svc"):
        assert dropped not in names, dropped
    # The client hop has its own framing and connection handling, never the upstream's: the
    # client asked to close, and a body of unknown length goes out chunked.
    assert response.header(b"connection") == [b"close"]
    assert response.header(b"transfer-encoding") == [b"chunked"]
    assert response.header(b"content-length") == []
    assert response.body == b"{}"
    assert response.header(b"retry-after") == [b"7"]
    assert response.header(b"x-ratelimit-remaining-requests") == [b"42"]
    assert response.header(b"x-ratelimit-remaining-tokens") == [b"4200"]
    assert response.header(b"apim-request-id") == [b"apim-1"]
    assert response.header(b"x-request-id") == [b"req-1"]
    assert response.header(b"content-type") == [b"application/json"]
    assert upstream.journal[-1].raw_path == "/openai/v1/x/hop"


@pytest.mark.parametrize("accept", ["gzip", None], ids=["client-accepts-gzip", "no-accept"])
def test_b21_gzip_with_content_length_is_byte_identical(
    scripted: tuple[Stack, ScriptedUpstream], evil: EvilListeners, accept: str | None
) -> None:
    """B21: a gzip body with its Content-Length reaches the client as the same bytes under the
    same Content-Encoding and Content-Length, whether or not the client said it accepts gzip:
    the proxy never decodes (its upstream session has auto_decompress off), so it can never
    send decoded bytes under the compressed length."""
    stack, _ = scripted
    assert stack.proxy is not None
    headers = [f"Accept-Encoding: {accept}"] if accept else []
    ex = exchange(
        stack.proxy.port, request("GET /v1/x/gzip HTTP/1.1", *headers, "Connection: close")
    )
    assert_healthy(stack, evil)
    (response,) = ex.responses
    assert response.status == 200
    assert response.header(b"content-encoding") == [b"gzip"]
    assert response.body == GZIP_BODY
    assert response.header(b"content-length") == [str(len(GZIP_BODY)).encode()]
    assert response.header(b"transfer-encoding") == []


def test_b22_cookies_do_not_cross_callers(
    scripted: tuple[Stack, ScriptedUpstream], evil: EvilListeners
) -> None:
    """B22: a Set-Cookie on client A's answer never rides on a later request, A's or B's."""
    stack, upstream = scripted
    with httpx2.Client(timeout=10) as a, httpx2.Client(timeout=10) as b:
        first = a.get(stack.url + "/v1/x/cookie?A-ONLY-COOKIE")
        assert first.status_code == 200
        assert "set-cookie" not in first.headers
        before = len(upstream.journal)
        assert a.get(stack.url + "/v1/x/again").status_code == 200
        assert b.get(stack.url + "/v1/x/other").status_code == 200
    later = upstream.journal[before:]
    assert len(later) == 2
    for seen in later:
        assert seen.header("cookie") == []
        assert "A-ONLY-COOKIE" not in str(seen.headers)
    assert_healthy(stack, evil)


# -- B23: DNS rebinding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:{P}",
        "evil.example",
        ":{P}",
        "127.0.0.1.evil.com",
        "127.0.0.1.evil.com:{P}",
        "localhost.evil",
        "localhost.evil:{P}",
        "127.0.0.1 evil",
        "0x7f.1",
        "2130706433",
        "127.0.0.1:{P}@evil.example",
        "[::1]evil.example",
    ],
)
def test_b23_dns_rebinding_hosts_are_refused(stack: Stack, evil: EvilListeners, host: str) -> None:
    """B23: a Host that is not this machine's loopback name gets 403 and reaches nothing; the
    answer tells the caller which names to use."""
    assert stack.proxy is not None
    value = host.format(P=stack.proxy.port)
    ex, seen = send(
        stack, evil, request("GET /v1/models HTTP/1.1", "Connection: close", host=value)
    )
    assert ex.statuses == [403], ex.text[:300]
    assert json.loads(ex.responses[0].body)["error"]["code"] == "forbidden_host"
    assert seen == []


@pytest.mark.parametrize("host", ["localhost:{P}", "127.0.0.1:{P}", "[::1]:{P}", "localhost"])
def test_b23_loopback_hosts_are_accepted(stack: Stack, evil: EvilListeners, host: str) -> None:
    """B23: localhost, 127.0.0.1 and [::1] (with the port) are served."""
    assert stack.proxy is not None
    value = host.format(P=stack.proxy.port)
    ex, seen = send(
        stack, evil, request("GET /v1/models HTTP/1.1", "Connection: close", host=value)
    )
    assert ex.statuses == [200]
    assert [e.raw_path for e in seen] == [MODELS]


# -- B24: browsers -------------------------------------------------------------------------------

SIMPLE_POST_BODY = chat_body()


@pytest.mark.parametrize(
    "headers",
    [
        ("Origin: https://evil.example", "Content-Type: text/plain"),
        ("Origin: null", "Content-Type: text/plain"),
        ("Origin: http://localhost:3000", "Content-Type: text/plain"),
        ("Origin: https://evil.example", "Content-Type: application/x-www-form-urlencoded"),
        ("Sec-Fetch-Site: cross-site", "Content-Type: text/plain"),
    ],
    ids=["evil-text-plain", "null", "local-page", "evil-form", "sec-fetch-cross-site"],
)
def test_b24_cross_origin_simple_posts_are_refused(
    stack: Stack, evil: EvilListeners, headers: tuple[str, ...]
) -> None:
    """B24: any Origin not allow-listed (and Sec-Fetch-Site: cross-site) gets 403, including
    the "simple" text/plain POST a page can send without a preflight."""
    ex, seen = send(
        stack,
        evil,
        request(
            "POST /v1/chat/completions HTTP/1.1",
            *headers,
            f"Content-Length: {len(SIMPLE_POST_BODY)}",
            "Connection: close",
            body=SIMPLE_POST_BODY,
        ),
    )
    assert ex.statuses == [403]
    assert seen == []
    assert not any(k.startswith(b"access-control-") for k, _ in ex.responses[0].headers)


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost:3000"])
def test_b24_preflight_gets_no_cors_allow_headers(
    stack: Stack, evil: EvilListeners, origin: str
) -> None:
    """B24: an OPTIONS preflight gets no Access-Control-Allow-* headers and is not forwarded."""
    ex, seen = send(
        stack,
        evil,
        request(
            "OPTIONS /v1/chat/completions HTTP/1.1",
            f"Origin: {origin}",
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: content-type, authorization",
            "Connection: close",
        ),
    )
    assert ex.statuses == [403]
    assert json.loads(ex.responses[0].body)["error"]["code"] == "forbidden_origin"
    assert not any(k.startswith(b"access-control-allow") for k, _ in ex.responses[0].headers)
    assert seen == []


def test_b24_normal_answers_carry_no_cors_headers(stack: Stack, evil: EvilListeners) -> None:
    """B24: the proxy never adds CORS headers to what it forwards."""
    ex, _ = send(stack, evil, request("GET /v1/models HTTP/1.1", "Connection: close"))
    assert ex.statuses == [200]
    assert not any(k.startswith(b"access-control-") for k, _ in ex.responses[0].headers)


# -- B25: upgrades -------------------------------------------------------------------------------

WS = (
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
)
H2C = (
    "Connection: Upgrade, HTTP2-Settings",
    "Upgrade: h2c",
    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
)


def _no_upgrade_upstream(seen: list[Entry]) -> None:
    for entry in seen:
        assert entry.header("upgrade") == []
        assert entry.header("http2-settings") == []
        assert entry.header("connection") == []


@pytest.mark.parametrize(
    "target",
    ["/openai/realtime?api-version=2025-04-01-preview&deployment=d", "/v1/realtime?model=m"],
)
def test_b25_websocket_upgrade_is_relayed_never_forwarded_as_http(
    stack: Stack, evil: EvilListeners, target: str
) -> None:
    """B25: a WebSocket handshake goes to the Realtime relay (tests/e2e/test_realtime.py), which
    makes its own handshake upstream. This stack's upstream speaks no WebSocket and answers it
    with a 500, which the relay turns into a 502 (as for HTTP), never a 101; no HTTP request
    carrying Upgrade is sent."""
    ex, seen = send(stack, evil, request(f"GET {target} HTTP/1.1", *WS), timeout=5)
    assert ex.statuses == [502], ex.text[:300]
    assert json.loads(ex.responses[0].body)["error"]["code"] == "upstream_refused"
    _no_upgrade_upstream(seen)


def test_b25_h2c_upgrade_is_ignored(stack: Stack, evil: EvilListeners) -> None:
    """B25: Upgrade: h2c with HTTP2-Settings on a GET is served as a plain HTTP/1.1 request
    (RFC 9110 section 7.8 lets a server ignore Upgrade), never 101; neither header reaches the
    upstream."""
    ex, seen = send(stack, evil, request("GET /v1/models HTTP/1.1", *H2C), timeout=5)
    assert ex.statuses == [200], ex.text[:300]
    assert [e.raw_path for e in seen] == [MODELS]
    _no_upgrade_upstream(seen)


def test_b25_h2c_upgrade_with_a_body_is_refused(stack: Stack, evil: EvilListeners) -> None:
    """B25: an Upgrade: h2c POST gets a 400 and nothing is forwarded. The HTTP parser stops
    reading at an upgrade head, so the body would be lost: the request must never go upstream
    as a different, empty one."""
    body = SIMPLE_POST_BODY
    ex, seen = send(
        stack,
        evil,
        request(
            "POST /v1/chat/completions HTTP/1.1",
            *H2C,
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            body=body,
        ),
        timeout=5,
    )
    assert ex.statuses == [400], ex.text[:300]
    assert json.loads(ex.responses[0].body)["error"]["code"] == "invalid_request"
    assert seen == []


def test_b25_websocket_upgrade_on_a_post_is_answered(stack: Stack, evil: EvilListeners) -> None:
    """B25: a POST with Upgrade: websocket gets a prompt 400 (a WebSocket handshake is a GET,
    RFC 6455 section 4.1, and the body could not be read), and nothing is forwarded."""
    body = SIMPLE_POST_BODY
    ex, seen = send(
        stack,
        evil,
        request(
            "POST /v1/chat/completions HTTP/1.1",
            *WS,
            f"Content-Length: {len(body)}",
            body=body,
        ),
        timeout=3,
    )
    assert ex.statuses == [400], f"{ex.statuses} (timed out: {ex.timed_out})"
    assert json.loads(ex.responses[0].body)["error"]["code"] == "invalid_request"
    assert seen == []


# -- B26: encoded CRLF ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/v1/models%0d%0aX-Injected:%20yes",
        "/v1/models%0D%0AX-Injected:%20yes",
        "/v1/models%0aX-Injected:%20yes",
        "/openai/deployments/d%0d%0aX-Injected:%20yes/chat/completions",
        "/v1/models%E5%98%8A%E5%98%8DX-Injected:%20yes",
        "/v1/models%250d%250aX-Injected:%20yes",
    ],
)
def test_b26_encoded_crlf_in_the_path_is_refused(
    stack: Stack, evil: EvilListeners, target: str
) -> None:
    """B26: %0d%0a (and its double-encoded and U+560A/U+560D forms) in the path -> 400."""
    ex, seen = send(stack, evil, request(f"GET {target} HTTP/1.1", "Connection: close"))
    assert ex.statuses == [400]
    assert seen == []


@pytest.mark.parametrize(
    "query",
    [
        "x=%0d%0aX-Injected:%20yes",
        "x=%0D%0AX-Injected:%20yes%0d%0a%0d%0aGET%20/openai/files",
        "x=%E5%98%8A%E5%98%8DX-Injected:%20yes",
    ],
)
def test_b26_encoded_crlf_in_the_query_stays_encoded(
    stack: Stack, evil: EvilListeners, query: str
) -> None:
    """B26: in the query it is forwarded still encoded, byte for byte, and never becomes a
    header or a second request upstream."""
    ex, seen = send(stack, evil, request(f"GET /v1/models?{query} HTTP/1.1", "Connection: close"))
    assert ex.statuses == [200]
    (entry,) = seen
    assert (entry.raw_path, entry.query) == (MODELS, query)
    assert entry.header("x-injected") == []
