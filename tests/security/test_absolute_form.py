"""Request targets over raw sockets (docs/security.md, A6 and A7; RFC 9112 section 3.2).

An absolute-form target naming the proxy itself is served as its origin-form, with the
target's authority as the Host the gate judges (RFC 9112 section 3.2.2). A target naming any
other server, authority-form (CONNECT) and asterisk-form are what a forward proxy is sent:
400 ``not_a_forward_proxy``, telling the user which base_url to set, and nothing is forwarded.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from tests.e2e.stack import Stack
from tests.fakes.evil import EvilListeners
from tests.security.support import assert_clean_answer, assert_healthy, fill, proxy_log_lines
from tests.support.rawsock import Exchange, exchange, request

pytestmark = pytest.mark.e2e

MODELS = "/openai/v1/models"
FROM_UPSTREAM = b"x-foundry-proxy-emulator"


def send(stack: Stack, evil: EvilListeners, data: bytes) -> tuple[Exchange, list[str]]:
    """One request; the answers, and the upstream paths the fake Foundry saw for it."""
    assert stack.proxy is not None
    before = len(stack.foundry.journal)
    log_from = proxy_log_lines(stack)
    ex = exchange(stack.proxy.port, fill(data, stack, evil), linger=0.5)
    assert_healthy(stack, evil, log_from)
    assert_clean_answer(stack, ex)
    return ex, [e.raw_path for e in stack.foundry.journal[before:]]


@pytest.mark.parametrize(
    ("line", "host", "path", "query"),
    [
        (b"GET http://127.0.0.1:{PORT}/v1/models HTTP/1.1", b"127.0.0.1:{PORT}", MODELS, ""),
        (b"GET HTTP://LOCALHOST:{PORT}/v1/models?x=1 HTTP/1.1", b"localhost", MODELS, "x=1"),
        (b"GET https://127.0.0.1:{PORT}/v1/models HTTP/1.1", b"127.0.0.1", MODELS, ""),
        # RFC 9112 section 3.2.2: the target's authority wins over the Host header, which the
        # gate would otherwise refuse as a rebinding page's.
        (b"GET http://127.0.0.1:{PORT}/v1/models HTTP/1.1", b"evil.example", MODELS, ""),
    ],
    ids=["plain", "upper-case-with-query", "https-scheme", "host-header-replaced"],
)
def test_absolute_form_naming_the_proxy_is_served_as_origin_form(
    stack: Stack, evil: EvilListeners, line: bytes, host: bytes, path: str, query: str
) -> None:
    before = len(stack.foundry.journal)
    ex, seen = send(stack, evil, request(line, b"Connection: close", host=host))
    assert ex.statuses == [200], ex.text[:800]
    assert ex.responses[0].header(FROM_UPSTREAM), "answered by the proxy, not the upstream"
    assert seen == [path]
    (entry,) = stack.foundry.journal[before:]
    assert entry.query == query
    # The upstream is called at its own host, never at the one the client named.
    assert entry.header("host") == [urlsplit(stack.foundry_server.url).netloc]


def test_absolute_form_with_an_empty_path_is_the_root(stack: Stack, evil: EvilListeners) -> None:
    ex, seen = send(
        stack, evil, request(b"GET http://127.0.0.1:{PORT} HTTP/1.1", b"Connection: close")
    )
    assert seen == []  # "/" is no route of the proxy's
    (answer,) = ex.responses
    assert not answer.header(FROM_UPSTREAM)
    assert json.loads(answer.body)["error"]["code"] != "not_a_forward_proxy", ex.text[:800]


@pytest.mark.parametrize(
    "data",
    [
        request(b"GET http://{EVIL}/v1/models HTTP/1.1", b"Connection: close"),
        request(
            b"POST http://{EVIL}/openai/deployments/d/chat/completions HTTP/1.1",
            b"Content-Length: 2",
            b"Connection: close",
            body=b"{}",
        ),
        request(b"GET https://{EVIL3} HTTP/1.1", b"Connection: close", host=b"{EVIL3}"),
        request(b"GET http://example.com/v1/models HTTP/1.1", b"Connection: close"),
        # A loopback host, but not this proxy's port (or no port: 80).
        request(b"GET http://127.0.0.1:1/v1/models HTTP/1.1", b"Connection: close"),
        request(b"GET http://localhost/v1/models HTTP/1.1", b"Connection: close"),
        request(b"GET http://u:p@127.0.0.1:{PORT}/v1/models HTTP/1.1", b"Connection: close"),
        request(b"GET ftp://127.0.0.1:{PORT}/v1/models HTTP/1.1", b"Connection: close"),
        request(b"CONNECT {EVIL} HTTP/1.1", host=b"{EVIL}"),
        request(b"CONNECT 127.0.0.1:{PORT} HTTP/1.1", host=b"127.0.0.1:{PORT}"),
        request(b"GET * HTTP/1.1", b"Connection: close"),
    ],
    ids=[
        "other-loopback-listener",
        "post-to-other-listener",
        "https-empty-path",
        "public-host",
        "loopback-other-port",
        "loopback-default-port",
        "userinfo",
        "other-scheme",
        "connect-other",
        "connect-self",
        "asterisk-get",
    ],
)
def test_forward_proxy_targets_get_400_not_a_forward_proxy(
    stack: Stack, evil: EvilListeners, data: bytes
) -> None:
    assert stack.proxy is not None
    ex, seen = send(stack, evil, data)
    assert seen == [], "a forward-proxy target was forwarded"
    assert ex.statuses == [400], ex.text[:800]
    assert ex.closed
    error = json.loads(ex.responses[0].body)["error"]
    assert error["code"] == "not_a_forward_proxy"
    assert "reverse proxy" in error["message"]
    assert f"http://127.0.0.1:{stack.proxy.port}/" in error["message"]


def test_options_asterisk_is_a_plain_400(stack: Stack, evil: EvilListeners) -> None:
    ex, seen = send(stack, evil, request(b"OPTIONS * HTTP/1.1", b"Connection: close"))
    assert seen == []
    assert ex.statuses == [400]
    assert json.loads(ex.responses[0].body)["error"]["code"] == "invalid_request"
