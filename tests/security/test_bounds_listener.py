"""Resource bounds of the listener, attacked over real sockets (security issue: pipelining depth,
CRLF trickle, connection cap, chunked trailers, the 413 of a chunked body).

Each attack is bounded in count and time and stops early once the proxy's memory passes the
bound it is testing, so a failing run never takes the machine down. Figures are printed
(``pytest -s``) for docs/security.md's resource-bounds table.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.e2e.stack import Stack, serving
from tests.fakes.evil import EvilListeners
from tests.load._support import raise_nofile, settle_fds
from tests.security.floods import Canary, Figures, Sampler, crlf_trickle, eventually, pipeline_flood
from tests.security.support import assert_clean_answer, assert_healthy
from tests.support.chat import CHAT_PATH, chat_body
from tests.support.rawsock import exchange, parse_responses, request

pytestmark = pytest.mark.e2e

KEY = "inbound-key-0123456789abcdef"
MIB = 1024  # KiB


# -- pipelining -----------------------------------------------------------------------------------


def test_pipelined_flood_keeps_memory_bounded(quiet: Stack, evil: EvilListeners) -> None:
    """One connection pipelining requests as fast as it can (reading the answers) cannot grow
    the proxy's memory without bound, and an ordinary client meanwhile keeps being served."""
    assert quiet.proxy is not None
    pid = quiet.proxy.proc.pid
    figures = Figures(pid)
    for _ in range(20):  # warm up allocator and caches before the baseline
        httpx2.get(quiet.url + "/v1/models", timeout=5)
    figures.before()
    bound_kib = 48 * MIB
    miss = request("GET /not-a-route HTTP/1.1")
    with Canary(quiet.url) as canary, Sampler(figures):
        result = pipeline_flood(
            quiet.proxy.port, miss, seconds=8, abort=lambda: figures.sample() > 4 * bound_kib
        )
    figures.after()
    print(f"\npipelining flood: {figures}; {canary}; {result}")
    assert not result.aborted, f"RSS grew past {4 * bound_kib // MIB} MB: {figures}"
    assert figures.rss_peak - figures.rss_before < bound_kib, str(figures)
    assert result.received > 0, "the pipelining client got no answer at all"
    assert canary.results, "the ordinary client made no request"
    assert not canary.failures, canary.failures[:3]
    assert_healthy(quiet, evil)


def test_pipelined_requests_are_all_answered_in_order(quiet: Stack) -> None:
    """Backpressure, not refusal: a client pipelining far past the depth (bodies of known and
    unknown length among the requests) still gets every answer, in order (RFC 9112 section
    9.3.2)."""
    assert quiet.proxy is not None
    chat = chat_body()
    post = f"POST {CHAT_PATH} HTTP/1.1"
    with_length = request(post, f"Content-Length: {len(chat)}", body=chat)
    chunked = request(post, "Transfer-Encoding: chunked", body=f"{len(chat):x}\r\n".encode())
    chunked += chat + b"\r\n0\r\n\r\n"
    miss = [request(f"GET /not-a-route-{i} HTTP/1.1") for i in range(100)]
    last = request("GET /v1/models HTTP/1.1", "Connection: close")
    data = b"".join([*miss, with_length, *miss[:50], chunked, *miss[:50], last])
    ex = exchange(quiet.proxy.port, data, expect=203, timeout=30)
    assert ex.statuses == [404] * 100 + [200] + [404] * 50 + [200] + [404] * 50 + [200]


def test_pipelining_past_the_bound_is_answered_then_closed(
    quiet: Stack, evil: EvilListeners
) -> None:
    """Past the depth and 16 KiB of held input, what was parsed is answered, in order, then
    the connection closes (with a FIN after the last answer, never a reset), and the proxy
    says which setting bit. Also with the flood behind a chunked body whose end is not looked
    for (an extension on the last chunk)."""
    assert quiet.proxy is not None
    tiny = request("GET /x HTTP/1.1")
    chunked = request(
        f"POST {CHAT_PATH} HTTP/1.1",
        "Transfer-Encoding: chunked",
        body=b"2\r\n{}\r\n0;x=y\r\nX-T: 1\r\n\r\n",
    )
    for lead in (b"", chunked):
        ex = exchange(quiet.proxy.port, lead + tiny * 3000, expect=3000, timeout=20)
        assert ex.closed
        answers = ex.statuses[1:] if lead else ex.statuses
        assert 8 < len(answers) < 3000, len(answers)
        assert set(answers) == {404}, ex.statuses[:5]
    assert eventually(lambda: "FOUNDRY_PROXY_MAX_PIPELINED" in quiet.proxy.log, 5)
    assert_healthy(quiet, evil)


# -- CRLF trickle and the connection cap ----------------------------------------------------------


@pytest.fixture
def short_head() -> Iterator[Stack]:
    yield from serving(Stack(FOUNDRY_PROXY_HEAD_TIMEOUT="2"))


def test_crlf_trickle_after_a_request_meets_the_head_deadline(
    short_head: Stack, evil: EvilListeners
) -> None:
    """Blank lines between requests start no message (llhttp skips them), and each byte used
    to reset the keep-alive timer: two bytes every half second kept a connection forever.
    The head deadline now runs from the first byte received while idle."""
    assert short_head.proxy is not None
    with socket.create_connection(("127.0.0.1", short_head.proxy.port), timeout=5) as sock:
        sock.sendall(request("GET /healthz HTTP/1.1"))
        first = b""
        while not parse_responses(first, closed=False):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.settimeout(0.5)
        began = time.monotonic()
        answer = b""
        closed = False
        while time.monotonic() - began < 12:
            try:
                sock.sendall(b"\r\n")
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
            answer += data
        lasted = time.monotonic() - began
    assert closed, "the connection outlived the head deadline on blank lines"
    assert lasted < 2 + 5 + 2, f"closed only after {lasted:.1f} s"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert_healthy(short_head, evil)


@pytest.fixture
def capped() -> Iterator[Stack]:
    yield from serving(Stack(FOUNDRY_PROXY_MAX_CONNECTIONS="20", FOUNDRY_PROXY_HEAD_TIMEOUT="30"))


def test_connections_beyond_the_cap_get_503_and_close(capped: Stack, evil: EvilListeners) -> None:
    """Past FOUNDRY_PROXY_MAX_CONNECTIONS a new connection is answered 503 (JSON, Retry-After)
    and closed; once connections end, new ones are served again."""
    assert capped.proxy is not None
    port = capped.proxy.port
    held: list[socket.socket] = []
    try:
        # The probe loop that waited for readiness may still hold a keep-alive connection.
        for _ in range(20):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.3)
        ex = exchange(port, request("GET /healthz HTTP/1.1"), timeout=5)
        assert ex.statuses == [503], ex.text[:500]
        (answer,) = ex.responses
        assert ex.closed
        assert answer.header(b"retry-after")
        assert json.loads(answer.body)["error"]["code"] == "too_many_connections"
        assert eventually(lambda: "FOUNDRY_PROXY_MAX_CONNECTIONS" in capped.proxy.log, 5)
    finally:
        for sock in held:
            sock.close()
    ok = False
    deadline = time.monotonic() + 10
    while not ok and time.monotonic() < deadline:
        ok = httpx2.get(capped.url + "/healthz", timeout=5).status_code == 200
    assert ok
    assert_healthy(capped, evil)


@pytest.fixture
def trickle_stack() -> Iterator[Stack]:
    yield from serving(
        Stack(
            FOUNDRY_PROXY_HEAD_TIMEOUT="3",
            FOUNDRY_PROXY_LOG_LEVEL="info",
            FOUNDRY_PROXY_ACCESS_LOG="off",
        )
    )


def test_crlf_trickle_flood_of_4000_connections(trickle_stack: Stack, evil: EvilListeners) -> None:
    """4000 connections, each after one request sending CRLF every second: those past the
    connection cap are refused at once, the rest end at the head deadline; fds and memory
    return to where they were, and a client with an open connection is served throughout."""
    assert trickle_stack.proxy is not None
    connections = 4000
    raise_nofile(2 * connections + 512)  # this process's sockets; the proxy raises its own
    pid = trickle_stack.proxy.proc.pid
    figures = Figures(pid)
    figures.before()
    with Canary(trickle_stack.url, every=0.25) as canary, Sampler(figures, every=0.2):
        result = crlf_trickle(
            trickle_stack.proxy.port, connections, every=1.0, seconds=15, on_ready=lambda: None
        )
    fds = settle_fds(pid, figures.fds_before + 10, 15)
    figures.after()
    print(
        f"\nCRLF trickle of {connections}: {figures}; {canary}; {result.opened} opened, "
        f"{result.refused} refused (cap), {result.failed} failed, {result.open_at_end} open "
        f"at the end, last closed after {max(result.closed_at, default=0):.1f} s"
    )
    assert result.open_at_end == 0, f"{result.open_at_end} connections outlived the deadline"
    assert result.opened + result.refused + result.failed == connections
    assert max(result.closed_at, default=0) < 3 + 5 + 3
    assert fds <= figures.fds_before + 10, str(figures)
    assert figures.rss_peak - figures.rss_before < 96 * MIB, str(figures)
    assert not canary.failures, canary.failures[:3]
    assert_healthy(trickle_stack, evil)


# -- chunked trailers -----------------------------------------------------------------------------


@pytest.fixture
def keyed() -> Iterator[Stack]:
    yield from serving(Stack(FOUNDRY_PROXY_API_KEYS=KEY))


def _chunked_with_trailer(key_in_head: bool, trailer: bytes) -> tuple[bytes, bytes]:
    head = request(
        f"POST {CHAT_PATH} HTTP/1.1",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
        *([f"api-key: {KEY}"] if key_in_head else []),
    )
    body = chat_body()
    return head + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n", trailer + b"\r\n"


@pytest.mark.parametrize("split", [False, True], ids=["one-segment", "trailer-apart"])
def test_a_trailer_key_is_not_an_inbound_key(
    keyed: Stack, evil: EvilListeners, split: bool
) -> None:
    """RFC 9112 section 7.1.2: trailer fields are not header fields. A key sent only as a
    trailer must not pass the inbound key check, however the bytes are segmented."""
    assert keyed.proxy is not None
    first, rest = _chunked_with_trailer(False, f"api-key: {KEY}\r\n".encode())
    pieces = [first, rest] if split else [first + rest]
    before = len(keyed.foundry.journal)
    ex = exchange(keyed.proxy.port, pieces, pause=0.3, timeout=5)
    assert ex.statuses == [401], ex.text[:500]
    assert len(keyed.foundry.journal) == before
    assert_clean_answer(keyed, ex)
    assert_healthy(keyed, evil)


@pytest.mark.parametrize("split", [False, True], ids=["one-segment", "trailer-apart"])
def test_trailers_never_reach_the_upstream(keyed: Stack, evil: EvilListeners, split: bool) -> None:
    assert keyed.proxy is not None
    first, rest = _chunked_with_trailer(True, b"X-T: 1\r\nX-Forwarded-For: 10.9.9.9\r\n")
    pieces = [first, rest] if split else [first + rest]
    before = len(keyed.foundry.journal)
    ex = exchange(keyed.proxy.port, pieces, pause=0.3, timeout=5)
    assert ex.statuses == [200], ex.text[:500]
    (entry,) = keyed.foundry.journal[before:]
    assert entry.header("x-t") == []
    assert entry.header("x-forwarded-for") == []
    assert_healthy(keyed, evil)


def test_huge_trailer_section_is_refused(keyed: Stack, evil: EvilListeners) -> None:
    """Trailers are dropped, so they must also be bounded: httptools buffers a field until it
    is complete, and a trailer field that never ends grew that buffer without limit. Past
    FOUNDRY_PROXY_MAX_HEADER_BYTES the request ends with 431."""
    assert keyed.proxy is not None
    first, _ = _chunked_with_trailer(True, b"")
    endless = [b"X-Big: "] + [b"a" * 65536] * 32  # 2 MiB, and no end of line
    ex = exchange(keyed.proxy.port, [first, *endless], pause=0.01, timeout=10)
    assert ex.statuses == [431], ex.text[:500]
    assert ex.closed
    assert_healthy(keyed, evil)


def _one_write(port: int, pieces: list[bytes]) -> bytes:
    """Each piece in one sendall (0.3 s apart), then everything the proxy sends until it
    closes; a reset raises."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(0.3)
            sock.sendall(piece)
        data = b""
        while part := sock.recv(65536):
            data += part
    return data


# 80 KiB of trailer fields, past the default FOUNDRY_PROXY_MAX_HEADER_BYTES (64 KiB): many
# fields, or one.
_MANY_FIELDS = b"".join(b"X-T-%04d: %s\r\n" % (i, b"v" * 66) for i in range(1000))
_ONE_FIELD = b"X-Big: " + b"a" * 80 * 1024 + b"\r\n"


@pytest.mark.parametrize("fields", [_MANY_FIELDS, _ONE_FIELD], ids=["many-fields", "one-field"])
@pytest.mark.parametrize("split", [False, True], ids=["one-write", "trailers-apart"])
def test_trailer_section_arriving_whole_is_refused(
    keyed: Stack, evil: EvilListeners, fields: bytes, split: bool
) -> None:
    """A trailer section past the bound is refused however it arrives: here whole, in one
    write (with the request, or after its body), not only trickling in."""
    assert keyed.proxy is not None
    assert len(fields) > 64 * 1024
    first, rest = _chunked_with_trailer(True, fields)
    pieces = [first, rest] if split else [first + rest]
    before = len(keyed.foundry.journal)
    data = _one_write(keyed.proxy.port, pieces)
    (answer,) = parse_responses(data, closed=True)
    assert answer.status == 431, data[:500]
    error = json.loads(answer.body)["error"]
    assert error["code"] == "header_too_large"
    assert "trailer section" in error["message"]
    assert len(keyed.foundry.journal) == before, "the refused request reached the upstream"
    assert_healthy(keyed, evil)


def test_trailer_section_under_the_bound_is_dropped(keyed: Stack, evil: EvilListeners) -> None:
    """The bound counts the trailer fields, not the reads that carry them: 60 KiB of them in
    one write (and 256 KiB of chunk data whose reads end at chunk headers) pass, and no
    trailer field reaches the upstream."""
    assert keyed.proxy is not None
    head = request(
        f"POST {CHAT_PATH} HTTP/1.1",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
        f"api-key: {KEY}",
    )
    body = chat_body(padding="p" * 256 * 1024)
    size = 64 * 1024
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    # Each write ends just after the next chunk's header, its data in the next write.
    pieces = [head + f"{len(parts[0]):x}\r\n".encode()]
    for part, after in zip(parts, [*parts[1:], b""], strict=True):
        pieces.append(part + f"\r\n{len(after):x}\r\n".encode())
    fields = b"".join(b"X-T-%04d: %s\r\n" % (i, b"v" * 66) for i in range(750))
    assert 56 * 1024 < len(fields) < 62 * 1024
    pieces.append(fields + b"X-Forwarded-For: 10.9.9.9\r\n\r\n")
    before = len(keyed.foundry.journal)
    ex = exchange(keyed.proxy.port, pieces, pause=0.3, timeout=10)
    assert ex.statuses == [200], ex.text[:500]
    (entry,) = keyed.foundry.journal[before:]
    assert (entry.body_len, entry.body_sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert entry.header("x-t-0000") == []
    assert entry.header("x-forwarded-for") == []
    assert_healthy(keyed, evil)


# -- the 413 of a chunked body --------------------------------------------------------------------


@pytest.fixture
def small_body() -> Iterator[Stack]:
    yield from serving(Stack(FOUNDRY_PROXY_MAX_BODY_BYTES="65536"))


def _chunks(total: int, size: int = 16384) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b"x" * size


def test_chunked_body_over_the_limit_gets_the_whole_413(
    small_body: Stack, evil: EvilListeners
) -> None:
    """A client that writes its whole (chunked) body before reading, as httpx does, reads the
    413 and its JSON body: the proxy stops writing, then discards the rest of the input for a
    bounded time before closing, so no reset destroys the answer."""
    with httpx2.Client(timeout=10) as client:
        for _ in range(3):
            r = client.post(
                small_body.url + "/v1/chat/completions", content=_chunks(2 * 1024 * 1024)
            )
            assert r.status_code == 413
            assert r.json()["error"]["code"] == "request_too_large"
    assert_healthy(small_body, evil)


def test_chunked_413_read_after_the_last_byte_raw(small_body: Stack, evil: EvilListeners) -> None:
    """The same with a raw socket that writes everything, then shuts down its sending side and
    reads: the whole 413 arrives and the connection ends with a FIN, not a reset."""
    assert small_body.proxy is not None
    head = request(f"POST {CHAT_PATH} HTTP/1.1", "Transfer-Encoding: chunked")
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
    with socket.create_connection(("127.0.0.1", small_body.proxy.port), timeout=10) as sock:
        sock.sendall(head + chunk * 64 + b"0\r\n\r\n")
        time.sleep(0.5)
        data = b""
        while True:
            part = sock.recv(65536)  # a reset raises here
            if not part:
                break
            data += part
    head_part, _, body = data.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 413"), data[:300]
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert_healthy(small_body, evil)
