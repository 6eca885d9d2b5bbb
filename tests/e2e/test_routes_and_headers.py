"""Routing, path safety (SSRF) and header rules, checked against the fake upstream's journal."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from tests.e2e.stack import Stack
from tests.fakes.serve import ServerThread
from tests.support.rawsock import exchange, request

pytestmark = pytest.mark.e2e


class _Evil:
    """A listener that must never be reached: every request to it is a test failure."""

    def __init__(self) -> None:
        self.hits: list[str] = []

    async def __call__(self, scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "http":
            self.hits.append(str(scope.get("path")))


@pytest.fixture(scope="module")
def evil() -> Iterator[tuple[_Evil, ServerThread]]:
    app = _Evil()
    server = ServerThread(app, host="127.0.0.2").start()
    yield app, server
    server.stop()


@pytest.mark.parametrize(
    ("target", "status"),
    [
        # Not in origin form: the guarded listener refuses it before any routing, whatever
        # host it names (the same as in tests/e2e/test_demo.py).
        ("http://127.0.0.2:{evil}/openai/v1/models", 400),
        ("https://127.0.0.2:{evil}/openai/v1/models", 400),
        # An origin-form path that is no route.
        ("//127.0.0.2:{evil}/openai/v1/models", 404),
        # Refused by the path check: dot or empty segments, encoded dots, slashes,
        # backslashes, percents and controls, a raw backslash.
        ("/v1/../../127.0.0.2:{evil}/x", 400),
        ("/openai/v1/models/../../../files", 400),
        ("/openai/v1/%2e%2e/%2e%2e/files", 400),
        ("/openai/v1/..%2f..%2ffiles", 400),
        ("/openai/v1/%2F127.0.0.2:{evil}", 400),
        ("/openai/v1/%252e%252e/files", 400),
        ("/openai/v1//files", 400),
        ("/openai/v1/.\\files", 400),
        ("/openai/v1/%5cfiles", 400),
        ("/openai/v1/models%00", 400),
        ("/v1/models/", 400),
    ],
)
def test_request_targets_never_leave_the_configured_origin(
    stack: Stack, evil: tuple[_Evil, ServerThread], target: str, status: int
) -> None:
    """C27/C28: absolute forms, //host, dot segments and encoded slashes are answered by the
    proxy itself and reach neither the upstream nor another host."""
    app, server = evil
    assert stack.proxy is not None
    before = len(stack.foundry.journal)
    target = target.format(evil=server.port)
    ex = exchange(stack.proxy.port, request(f"GET {target} HTTP/1.1", "Connection: close"))
    assert app.hits == []
    new = stack.foundry.journal[before:]
    assert new == [], f"{target} was forwarded as {[e.raw_path for e in new]}"
    assert ex.statuses == [status], ex.text[:300]
    assert not stack.leaks(ex.text)


@pytest.mark.parametrize(
    "path", ["/", "/foo", "/v2/models", "/openaix/v1/models", "/v1", "/metrics.php"]
)
def test_unknown_paths_get_an_openai_shaped_404(stack: Stack, path: str) -> None:
    before = len(stack.foundry.journal)
    r = httpx2.get(stack.url + path)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert len(stack.foundry.journal) == before


def test_query_string_is_forwarded_verbatim(stack: Stack) -> None:
    query = "api-version=2025-04-01-preview&x=%2F%20a&empty=&flag"
    r = httpx2.post(f"{stack.url}/openai/deployments/d1/embeddings?{query}", json={"input": "a"})
    assert r.status_code == 200
    entry = stack.foundry.journal[-1]
    assert (entry.raw_path, entry.query) == ("/openai/deployments/d1/embeddings", query)


@pytest.mark.parametrize(
    ("local", "upstream"),
    [
        ("/v1/files/file-abc", "/openai/v1/files/file-abc"),
        ("/openai/v1/responses", "/openai/v1/responses"),
        ("/openai/responses?api-version=2025-04-01-preview", "/openai/responses"),
        ("/models/chat/completions", "/models/chat/completions"),
        ("/api/projects/proj1/openai/v1/responses", "/api/projects/proj1/openai/v1/responses"),
    ],
)
def test_route_families(stack: Stack, local: str, upstream: str) -> None:
    r = httpx2.post(stack.url + local, json={"model": "m"})
    assert r.status_code == 200, r.text
    entry = stack.foundry.journal[-1]
    assert entry.raw_path == upstream
    # /api/projects/ needs a token for https://ai.azure.com; the fake checks the audience.
    assert entry.auth == "ok"


def test_methods_and_bodies_pass_through(stack: Stack) -> None:
    r = httpx2.request("DELETE", stack.url + "/v1/files/file-1")
    assert r.status_code == 200
    assert r.json()["method"] == "DELETE"


def test_request_header_rules(stack: Stack) -> None:
    """B15-B18: one Authorization (the proxy's), no client credentials or hop-by-hop headers."""
    headers = [
        ("Authorization", "Bearer client-supplied"),
        ("api-key", "client-key"),
        ("Ocp-Apim-Subscription-Key", "sub-key"),
        ("x-api-key", "xkey"),
        ("Cookie", "a=b"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=10.0.0.1"),
        ("Proxy-Authorization", "Basic eA=="),
        ("TE", "trailers"),
        ("Keep-Alive", "timeout=5"),
        ("Connection", "keep-alive, X-Drop-Me, Authorization"),
        ("X-Drop-Me", "1"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("x-ms-client-request-id", "cid-123"),
        ("extra-parameters", "pass-through"),
        ("aoai-evals", "preview"),
        ("OpenAI-Organization", "org"),
        ("x-stainless-lang", "python"),
        ("User-Agent", "my-app/1.0"),
    ]
    r = httpx2.post(stack.url + "/v1/chat/completions", json={"model": "m"}, headers=headers)
    assert r.status_code == 200
    entry = stack.foundry.journal[-1]
    names = [k for k, _ in entry.headers]
    for dropped in (
        "api-key",
        "ocp-apim-subscription-key",
        "x-api-key",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "proxy-authorization",
        "te",
        "keep-alive",
        "connection",
        "x-drop-me",
        "x-http-method-override",
    ):
        assert dropped not in names, dropped
    assert entry.header("authorization") == [
        "Bearer " + stack.issuer.token(entry.token_serial or 0)
    ]
    assert entry.header("host") == [stack.foundry_server.url.removeprefix("http://")]
    assert entry.header("x-ms-client-request-id") == ["cid-123"]
    assert entry.header("extra-parameters") == ["pass-through"]
    assert entry.header("aoai-evals") == ["preview"]
    assert entry.header("openai-organization") == ["org"]
    assert entry.header("x-stainless-lang") == ["python"]
    assert entry.header("user-agent") == ["my-app/1.0"]


def test_without_accept_encoding_the_upstream_is_asked_for_identity(stack: Stack) -> None:
    """The upstream may compress only when the client said it can decode."""
    assert stack.proxy is not None
    ex = exchange(stack.proxy.port, request("GET /v1/models HTTP/1.1", "Connection: close"))
    assert ex.statuses == [200]
    assert stack.foundry.journal[-1].header("accept-encoding") == ["identity"]


def test_response_header_rules(stack: Stack) -> None:
    """B20: hop-by-hop and cookies dropped; rate-limit and request-id headers kept."""
    r = httpx2.get(stack.url + "/openai/v1/hop-headers")
    assert r.status_code == 200
    for dropped in ("x-secret-hop", "keep-alive", "proxy-authenticate", "set-cookie", "alt-svc"):
        assert dropped not in r.headers, dropped
    assert r.headers["retry-after"] == "7"
    assert r.headers["retry-after-ms"] == "7000"
    assert r.headers["x-ratelimit-remaining-requests"] == "42"
    assert r.headers["apim-request-id"] == "apim-hop"
    assert r.headers["x-request-id"] == "req-hop"
    assert r.headers["x-ms-region"] == "Sweden Central"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_upstream_errors_pass_through_unchanged(stack: Stack, status: int) -> None:
    """F58: no retries by the proxy; the SDK sees the status and retry headers."""
    before = len(stack.foundry.journal)
    r = httpx2.post(stack.url + f"/v1/status/{status}", json={})
    assert r.status_code == status
    assert r.headers["retry-after"] == "3"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(stack.foundry.journal) == before + 1


def test_probes(stack: Stack) -> None:
    assert httpx2.get(stack.url + "/healthz").json() == {"status": "ok"}
    ready = httpx2.get(stack.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert 3000 < ready.json()["token_expires_in"] <= 3600
    for body in (ready.text, httpx2.get(stack.url + "/healthz").text):
        assert not stack.leaks(body)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"Host": "evil.example"}, "forbidden_host"),
        ({"Host": "127.0.0.1.evil.com:80"}, "forbidden_host"),
        ({"Host": "localhost.evil"}, "forbidden_host"),
        ({"Origin": "https://evil.example"}, "forbidden_origin"),
        ({"Origin": "null"}, "forbidden_origin"),
        ({"Sec-Fetch-Site": "cross-site"}, "forbidden_origin"),
    ],
)
def test_web_pages_cannot_use_the_proxy(stack: Stack, headers: dict[str, str], code: str) -> None:
    """B23/B24: DNS rebinding and cross-site requests get 403 and reach nothing."""
    before = len(stack.foundry.journal)
    r = httpx2.post(
        stack.url + "/v1/chat/completions",
        json={"model": "m"},
        headers={"Content-Type": "text/plain", **headers},
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == code
    assert len(stack.foundry.journal) == before


@pytest.mark.parametrize(
    "host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "app.localhost:{port}"]
)
def test_loopback_host_names_are_accepted(stack: Stack, host: str) -> None:
    assert stack.proxy is not None
    r = httpx2.get(stack.url + "/v1/models", headers={"Host": host.format(port=stack.proxy.port)})
    assert r.status_code == 200


def test_broken_401_body_is_a_clean_502(stack: Stack) -> None:
    r = httpx2.get(stack.url + "/v1/truncated-401")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"


def test_non_ascii_header_values_arrive_unchanged(stack: Stack) -> None:
    r = httpx2.get(stack.url + "/v1/models", headers=[("x-note", "café".encode())])
    assert r.status_code == 200
    # The journal holds header bytes as latin-1 text: compare the bytes themselves.
    sent = [v.encode("latin-1") for v in stack.foundry.journal[-1].header("x-note")]
    assert sent == ["café".encode()]


def test_redirects_are_not_followed(stack: Stack, evil: tuple[_Evil, ServerThread]) -> None:
    """C30: a 307 to another host goes back to the client; the token never follows it."""
    app, server = evil
    target = f"http://127.0.0.2:{server.port}/steal"
    before = len(stack.foundry.journal)
    r = httpx2.post(stack.url + f"/v1/redirect?to={target}", json={"model": "m"})
    assert r.status_code == 307
    assert r.headers["location"] == target
    assert app.hits == []
    assert len(stack.foundry.journal) == before + 1
