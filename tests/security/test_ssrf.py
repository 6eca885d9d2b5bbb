"""SSRF, paths and destination: docs/security.md, C27, C28, C30-C34 (C29 is tested elsewhere).

The invariant (docs/security.md): the token leaves only to the configured host:port, for the path
that was checked. Every case checks the fake upstream's journal, the evil listeners on
127.0.0.2/.3, and that no token or secret comes back to the client.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.stack import Stack, clean_environment, run_proxy
from tests.fakes.evil import EvilListeners, ScriptedUpstream, TcpCounter
from tests.fakes.serve import ServerThread
from tests.security.support import (
    assert_clean_answer,
    assert_healthy,
    fill,
    mapped,
    proxy_log_lines,
    unsafe_upstream_path,
)
from tests.support.identities import CLIENT_ID, TENANT
from tests.support.rawsock import exchange, request
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e


def _split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target as an HTTP parser sees it: the authority of an
    absolute form dropped, the fragment dropped."""
    if target.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        query_at = rest.find("?")
        no_path = slash == -1 or (query_at != -1 and query_at < slash)
        target = "" if no_path else rest[slash:]
    target = target.split("#", 1)[0]
    path, _, query = target.partition("?")
    return path, query


def send_target(
    stack: Stack, evil: EvilListeners, target: bytes, *headers: bytes, method: bytes = b"GET"
) -> tuple[list[int], list[tuple[str, str]]]:
    """Send ``target`` over a raw socket; return the statuses and (raw path, query) pairs the
    upstream saw, after checking the common invariants and the upstream's Host."""
    assert stack.proxy is not None
    before = len(stack.foundry.journal)
    log_from = proxy_log_lines(stack)
    body = b"{}" if method == b"POST" else b""
    length = [b"Content-Length: 2"] if body else []
    line = method + b" " + target + b" HTTP/1.1"
    data = request(line, *headers, *length, b"Connection: close", body=body, host=None)
    ex = exchange(stack.proxy.port, data, timeout=5, linger=0.1)
    assert_healthy(stack, evil, log_from)
    assert_clean_answer(stack, ex)
    upstream = stack.foundry_server.url.removeprefix("http://")
    seen = stack.foundry.journal[before:]
    for entry in seen:
        assert entry.header("host") == [upstream]
        assert entry.token_serial is not None
        assert unsafe_upstream_path(entry.raw_path) is None, entry.raw_path
    return ex.statuses, [(e.raw_path, e.query) for e in seen]


# -- C27: property ------------------------------------------------------------------------------

_PATH_CHARS = "abcmodels019-._~%2fFeE5cC/\\;:@!$&'()*+,=#?"


@st.composite
def targets(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A request target and headers mixing routes, traversal, encodings and evil hosts."""
    prefix = draw(
        st.sampled_from(
            [
                "/v1/",
                "/openai/",
                "/openai/v1/",
                "/models/",
                "/api/projects/p/",
                "/openai/deployments/d/",
                "/",
                "//",
                "/v1//",
                "/v1/../",
                "",
            ]
        )
    )
    tail = draw(st.text(alphabet=_PATH_CHARS, max_size=24))
    path = prefix + draw(st.sampled_from(["models", "chat/completions", "files", ""])) + tail
    evil_host = draw(st.sampled_from(["{EVIL}", "{EVIL3}", "evil.example", "127.0.0.1@{EVIL}"]))
    form = draw(st.sampled_from(["origin", "http", "https", "scheme-relative", "authority"]))
    if form == "http":
        target = f"http://{evil_host}{path if path.startswith('/') else '/' + path}"
    elif form == "https":
        target = f"https://{evil_host}{path if path.startswith('/') else '/' + path}"
    elif form == "scheme-relative":
        target = f"//{evil_host}{path if path.startswith('/') else '/' + path}"
    elif form == "authority":
        target = evil_host
    else:
        target = path
    headers = []
    host = draw(st.sampled_from(["127.0.0.1:{PORT}", "localhost", "{EVIL}", "{EVIL3}", None]))
    if host is not None:
        headers.append(f"Host: {host}")
    for extra in draw(
        st.lists(
            st.sampled_from(
                [
                    "X-Forwarded-Host: {EVIL}",
                    "X-Forwarded-Host: evil.example",
                    "X-Forwarded-Proto: https",
                    "Forwarded: host={EVIL3};proto=http",
                    "X-Original-URL: http://{EVIL}/openai/v1/models",
                    "X-Rewrite-URL: //{EVIL3}/openai/v1/models",
                    "X-Forwarded-Prefix: http://{EVIL}",
                ]
            ),
            max_size=3,
            unique=True,
        )
    ):
        headers.append(extra)
    return target.encode(), [h.encode() for h in headers]


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=targets(), post=st.booleans())
def test_c27_no_target_or_header_reaches_another_host(
    stack: Stack, evil: EvilListeners, case: tuple[bytes, list[bytes]], post: bool
) -> None:
    """C27: for arbitrary targets (origin, absolute, scheme-relative, authority forms), Host,
    X-Forwarded-Host and friends, every upstream request goes to the configured host:port,
    for exactly the path that was sent (after the route mapping); evil listeners get 0 hits."""
    target = fill(case[0], stack, evil)
    headers = [fill(h, stack, evil) for h in case[1]]
    _, seen = send_target(stack, evil, target, *headers, method=b"POST" if post else b"GET")
    assert len(seen) <= 1
    if seen:
        path, query = _split_target(target.decode())
        assert seen[0] == (mapped(path), query), (target, seen)


# -- C28: path tricks ---------------------------------------------------------------------------

# Each trick and its one answer: the status, and the (raw path, query) the upstream saw, if
# anything went there. 400: the proxy's path check (dot, empty or encoded-dot/slash/backslash
# segments, controls, non-ASCII; RFC 3986 section 3.3 pchar only). 404: not under a route
# (routes are case-sensitive and start with a single slash). 200: forwarded byte for byte
# after the route mapping, ``/v1/x`` -> ``/openai/v1/x``.
REFUSED, NOT_A_ROUTE = (400, None), (404, None)
PATH_TRICKS: list[tuple[bytes, tuple[int, tuple[str, str] | None]]] = [
    (b"/v1/chat/completions/../../../files", REFUSED),
    (b"/openai/deployments/d/chat/completions/../../../files", REFUSED),
    (b"/v1/%2e%2e/files", REFUSED),
    (b"/v1/%2E%2E/%2E%2E/openai/files", REFUSED),
    (b"/v1/.%2e/files", REFUSED),
    (b"/v1/models%2Ffiles", REFUSED),
    (b"/v1/models%2ffiles", REFUSED),
    (b"/v1/models%252Ffiles", REFUSED),
    (b"/v1/%252e%252e/files", REFUSED),
    (b"//openai/files", NOT_A_ROUTE),
    (b"/openai//files", REFUSED),
    (b"/v1//files", REFUSED),
    (b"/v1\\..\\files", NOT_A_ROUTE),
    (b"/v1/models\\..\\files", REFUSED),
    (b"/v1/models%5c..%5cfiles", REFUSED),
    # ";" is a sub-delim, allowed in a segment: a plain (if unknown) path for Foundry.
    (b"/v1/models;x", (200, ("/openai/v1/models;x", ""))),
    (b"/v1/models;/../files", REFUSED),
    (b"/v1/..;/files", REFUSED),
    # A fragment is never part of the path: what follows "#" is dropped, never forwarded.
    (b"/v1/models#/../../files", (200, ("/openai/v1/models", ""))),
    (b"/v1/models#", (200, ("/openai/v1/models", ""))),
    (b"/v1/models/", REFUSED),
    (b"/v1/models?q=/files", (200, ("/openai/v1/models", "q=/files"))),
    (b"/v1/models?q=../../files", (200, ("/openai/v1/models", "q=../../files"))),
    (b"/OpenAI/Files", NOT_A_ROUTE),
    (b"/V1/models", NOT_A_ROUTE),
    ("/v1/\uff0e\uff0e/files".encode(), REFUSED),
    (b"/v1/%EF%BC%8E%EF%BC%8E/files", REFUSED),
    (b"/v1/%C0%AE%C0%AE/files", REFUSED),
    (b"/v1/./models", REFUSED),
    (b"/v1/models/.", REFUSED),
    (b"/v1/models/..", REFUSED),
    (b"/openai/v1/./files", REFUSED),
    (b"/v1/models%00", REFUSED),
    (b"/v1/models%20/../files", REFUSED),
]


@pytest.mark.parametrize(
    ("target", "expected"), PATH_TRICKS, ids=[t.decode("latin-1") for t, _ in PATH_TRICKS]
)
def test_c28_path_tricks_get_their_one_answer(
    stack: Stack,
    evil: EvilListeners,
    target: bytes,
    expected: tuple[int, tuple[str, str] | None],
) -> None:
    """C28: each trick gets its status from the table; a refused one reaches nothing, and a
    forwarded one reaches the upstream with a raw path byte-identical to the path sent, after
    the route mapping (a fragment is never part of the path)."""
    status, forwarded = expected
    statuses, seen = send_target(stack, evil, target, b"Host: 127.0.0.1")
    assert (statuses, seen) == ([status], [forwarded] if forwarded else [])
    if forwarded is not None:
        path, query = _split_target(target.decode("latin-1"))
        assert forwarded == (mapped(path), query)


# -- C30: redirects -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_c30_redirects_go_back_to_the_client_unfollowed(
    scripted: tuple[Stack, ScriptedUpstream], evil: EvilListeners, status: int, scheme: str
) -> None:
    """C30: an upstream 3xx to an evil listener reaches the client as is; one upstream request,
    0 evil hits, and no token in the answer."""
    stack, upstream = scripted
    location = f"{scheme}://{evil.authorities[status % 2]}/steal?x=1"
    before = len(upstream.journal)
    with httpx2.Client(timeout=10, follow_redirects=False) as client:
        r = client.post(
            stack.url + f"/v1/x/redirect/{status}", params={"to": location}, json={"model": "m"}
        )
    assert r.status_code == status
    assert r.headers["location"] == location
    assert len(upstream.journal) == before + 1
    assert upstream.journal[-1].raw_path == f"/openai/v1/x/redirect/{status}"
    assert not stack.leaks(r.text + json.dumps(dict(r.headers)))
    assert_healthy(stack, evil)


# -- C31: body fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/openai/deployments/d1/chat/completions?api-version=2024-10-21",
        "/v1/embeddings",
        "/v1/responses",
    ],
)
def test_c31_endpoint_fields_in_the_body_are_forwarded_verbatim(
    stack: Stack, evil: EvilListeners, path: str
) -> None:
    """C31: api_base, base_url, azure_endpoint and a URL as model travel as body bytes, byte
    for byte, to the configured upstream only; nothing ever connects to them."""
    e2, e3 = evil.authorities
    body = json.dumps(
        {
            "model": f"https://{e2}/evil",
            "api_base": f"http://{e2}",
            "base_url": f"http://{e3}/v1",
            "azure_endpoint": f"https://{e2}",
            "extra_body": {"api_base": f"http://{e3}", "base_url": f"//{e3}"},
            "messages": [{"role": "user", "content": "hi"}],
            "input": "hi",
        }
    ).encode()
    before = len(stack.foundry.journal)
    r = httpx2.post(
        stack.url + path, content=body, headers={"content-type": "application/json"}, timeout=10
    )
    assert r.status_code < 500, r.text
    (entry,) = stack.foundry.journal[before:]
    assert entry.body_sha256 == hashlib.sha256(body).hexdigest()
    assert entry.header("host") == [stack.foundry_server.url.removeprefix("http://")]
    assert not stack.leaks(r.text)
    assert_healthy(stack, evil)


# -- C32: configuration refusals ----------------------------------------------------------------

PASSWORD_CANARY = "CANARY-USERINFO-PASSWORD"


def _run_proxy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = clean_environment() | {
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "AZURE_CLIENT_SECRET": "CANARY-SECRET-c32",
        "AZURE_AUTHORITY_HOST": "http://127.0.0.1:9",
        "FOUNDRY_PROXY_UPSTREAM": "https://myres.openai.azure.com",
    }
    return run_proxy(["--port", "0", *args], base | env)


@pytest.mark.parametrize(
    ("upstream", "says"),
    [
        ("http://example.com", "https"),
        ("http://myres.openai.azure.com", "https"),
        (f"https://user:{PASSWORD_CANARY}@myres.openai.azure.com", "user name or password"),
        ("https://user@myres.openai.azure.com", "user name or password"),
        (f"http://user:{PASSWORD_CANARY}@127.0.0.1:1", "user name or password"),
        ("https://myres.openai.azure.com/openai", "origin only"),
        ("https://myres.openai.azure.com/?x=1", "query"),
        ("ftp://myres.openai.azure.com", "https"),
        ("myres.openai.azure.com", "https"),
    ],
)
def test_c32_unsafe_upstreams_are_refused_at_startup(upstream: str, says: str) -> None:
    """C32 (docs/security.md): https required except for loopback hosts; no userinfo, path, query or
    other scheme. Exit code 2, a message naming the setting, and no value echoed."""
    result = _run_proxy({"FOUNDRY_PROXY_UPSTREAM": upstream})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "FOUNDRY_PROXY_UPSTREAM" in output
    assert says in output
    assert PASSWORD_CANARY not in output
    assert "CANARY-SECRET-c32" not in output


@pytest.mark.parametrize(
    ("env", "args"),
    [
        ({}, ("--host", "0.0.0.0")),
        ({"FOUNDRY_PROXY_HOST": "0.0.0.0"}, ()),
        ({"FOUNDRY_PROXY_HOST": "::"}, ()),
        ({}, ("--host", "192.0.2.1")),
    ],
    ids=["cli-0.0.0.0", "env-0.0.0.0", "env-ipv6-any", "cli-other-address"],
)
def test_c32_non_loopback_bind_without_opt_in_is_refused(
    env: dict[str, str], args: tuple[str, ...]
) -> None:
    """C32: a non-loopback bind needs an inbound key or an explicit opt-in: exit code 2."""
    result = _run_proxy(env, *args)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "FOUNDRY_PROXY_HOST" in output
    assert "loopback" in output


def test_c32_default_bind_is_loopback(stack: Stack) -> None:
    """C32: with no host setting the proxy listens on 127.0.0.1 only (kernel socket table)."""
    assert stack.proxy is not None
    port = f"{stack.proxy.port:04X}"
    inode_owner = Path(f"/proc/{stack.proxy.proc.pid}/fd")
    sockets = {p.resolve().name for p in inode_owner.iterdir() if "socket" in str(p.readlink())}
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and local.endswith(":" + port) and f"socket:[{inode}]" in sockets:
                listening.append(local.split(":")[0])
    assert listening == ["0100007F"], listening


# -- C33: TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_upstream(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, ScriptedUpstream, Path]]:
    """An https upstream whose certificate comes from a CA the proxy does not trust."""
    tmp = tmp_path_factory.mktemp("c33")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    key_file, cert_file, ca_file = tmp / "key.pem", tmp / "cert.pem", tmp / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    ca.cert_pem.write_to_path(str(ca_file))
    upstream = ScriptedUpstream()
    server = ServerThread(upstream, ssl_keyfile=str(key_file), ssl_certfile=str(cert_file)).start()
    try:
        yield f"https://127.0.0.1:{server.port}", upstream, ca_file
    finally:
        server.stop()


def test_c33_untrusted_upstream_certificate_is_a_502_and_no_token_is_sent(
    tls_upstream: tuple[str, ScriptedUpstream, Path], evil: EvilListeners
) -> None:
    """C33: an upstream certificate from an unknown CA -> 502 upstream_tls_error; the upstream
    logs no request, so the token never left."""
    url, upstream, _ = tls_upstream
    s = Stack(FOUNDRY_PROXY_UPSTREAM=url)
    try:
        s.start_proxy()
        r = httpx2.post(s.url + "/v1/chat/completions", json={"model": "m"}, timeout=15)
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "upstream_tls_error"
        assert upstream.journal == []
        assert not s.leaks(r.text)
        assert_healthy(s, evil)
    finally:
        log = s.close()
    assert not s.leaks(log)


def test_c33_control_the_same_upstream_works_once_its_ca_is_trusted(
    tls_upstream: tuple[str, ScriptedUpstream, Path], evil: EvilListeners
) -> None:
    """C33 control: with SSL_CERT_FILE naming the CA the same request goes through, so the 502
    above is about trust and nothing else."""
    url, upstream, ca_file = tls_upstream
    s = Stack(FOUNDRY_PROXY_UPSTREAM=url, SSL_CERT_FILE=str(ca_file))
    try:
        s.start_proxy()
        r = httpx2.post(s.url + "/v1/chat/completions", json={"model": "m"}, timeout=15)
        assert r.status_code == 200, r.text
        (seen,) = upstream.journal
        (auth,) = seen.header("authorization")
        assert s.issuer.serial(auth.removeprefix("Bearer ")) is not None
        assert_healthy(s, evil)
    finally:
        upstream.journal.clear()
        log = s.close()
    assert not s.leaks(log)


# -- C34: proxy environment variables ------------------------------------------------------------

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def evil_proxy() -> Iterator[TcpCounter]:
    counter = TcpCounter("127.0.0.2").start()
    try:
        yield counter
    finally:
        counter.stop()


def test_c34_proxy_variables_are_ignored_and_named_in_a_warning(
    evil_proxy: TcpCounter, evil: EvilListeners
) -> None:
    """C34: HTTPS_PROXY/HTTP_PROXY/ALL_PROXY pointing at an evil loopback proxy are not used
    (0 connections to it) unless FOUNDRY_PROXY_TRUST_ENV=true; a startup warning names them."""
    url = f"http://127.0.0.2:{evil_proxy.port}"
    s = Stack(**dict.fromkeys(PROXY_VARS, url))
    try:
        s.start_proxy()
        for path in ("/v1/chat/completions", "/v1/embeddings"):
            r = httpx2.post(s.url + path, json={"model": "m", "input": "x"}, timeout=10)
            assert r.status_code == 200, r.text
        assert evil_proxy.connections == []
        assert_healthy(s, evil)
        assert s.proxy is not None
        warning = next((line for line in s.proxy.lines if "FOUNDRY_PROXY_TRUST_ENV" in line), None)
        assert warning is not None, s.proxy.log[-2000:]
        assert "WARNING" in warning
        for name in PROXY_VARS:
            assert re.search(rf"(^|[\s/]){name}([\s/]|$)", warning), (name, warning)
        assert url not in s.proxy.log, "the proxy URL (which may hold a password) was logged"
    finally:
        log = s.close()
    assert not s.leaks(log)


def test_c34_control_trust_env_true_does_use_the_proxy(evil_proxy: TcpCounter) -> None:
    """C34 control: with FOUNDRY_PROXY_TRUST_ENV=true the same variables are honoured, so the
    0 connections above mean 'ignored', not 'never tried'."""
    url = f"http://127.0.0.2:{evil_proxy.port}"
    s = Stack(
        FOUNDRY_PROXY_TRUST_ENV="true",
        FOUNDRY_PROXY_TOKEN_WAIT="1",
        **dict.fromkeys(PROXY_VARS, url),
    )
    try:
        s.start_proxy(ready=False)
        # Entra (and the upstream) are reached through the evil proxy, which hangs up.
        r = httpx2.post(s.url + "/v1/chat/completions", json={"model": "m"}, timeout=30)
        assert r.status_code in (502, 503), r.text
        assert wait_until(lambda: evil_proxy.connections, 5)
    finally:
        s.close()
