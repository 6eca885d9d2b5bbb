"""Malformed HTTP over raw sockets: docs/security.md, A1-A13 as a corpus and A14 fuzzing.

Each corpus entry is exact bytes plus the expected outcome. Every case also asserts the
invariants of docs/security.md: the proxy process is alive, no answer is a 500 or carries a
traceback (nor does the proxy log one), nothing reached the evil listeners on 127.0.0.2/.3,
and the fake Foundry's journal holds only the requests the case meant to forward.

Placeholders in the bytes: ``{EVIL}`` / ``{EVIL3}`` become the evil listeners' host:port,
``{PORT}`` the proxy's port.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.stack import Stack
from tests.fakes.evil import EvilListeners
from tests.security.support import (
    assert_clean_answer,
    assert_healthy,
    fill,
    local_candidates,
    proxy_log_lines,
    unsafe_upstream_path,
)
from tests.support.chat import UPSTREAM_CHAT_PATH
from tests.support.procfs import peak_rss_kb, rss_kb
from tests.support.rawsock import Exchange, exchange, request

pytestmark = pytest.mark.e2e

MODELS = "/openai/v1/models"
# The fake Foundry marks every answer it makes; the proxy's own answers lack this header.
FROM_UPSTREAM = b"x-foundry-proxy-emulator"


@dataclass(frozen=True)
class Case:
    id: str
    pieces: tuple[bytes, ...]
    #: Allowed statuses of each response, in order (a 100 Continue counts as one).
    statuses: tuple[frozenset[int], ...]
    #: The upstream path each response's request may be forwarded as; None: must not be.
    paths: tuple[str | None, ...]
    #: The proxy must close the connection after answering.
    close: bool = True
    #: Set when the proxy fails this case today: what it does instead.
    xfail: str | None = None
    pause: float = 0.0
    marks: tuple[pytest.MarkDecorator, ...] = field(default=())

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


def refused(
    case_id: str, data: bytes, *statuses: int, close: bool = True, xfail: str | None = None
) -> Case:
    """Refused by the proxy (or its HTTP parser): nothing is forwarded."""
    return Case(case_id, (data,), (frozenset(statuses),), (None,), close, xfail)


def accepted(case_id: str, data: bytes, path: str, *statuses: int) -> Case:
    """A well-formed request that is forwarded as ``path`` (statuses: what may come back)."""
    return Case(case_id, (data,), (frozenset(statuses or (200,)),), (path,), close=False)


POST_CHAT = b"POST /v1/chat/completions HTTP/1.1"
GET_MODELS = b"GET /v1/models HTTP/1.1"
CLOSE = b"Connection: close"
SMUGGLED = request(b"GET /openai/files HTTP/1.1")
CHUNKED_BODY = b"2\r\n{}\r\n0\r\n\r\n"

CORPUS: list[Case] = [
    # -- A1: Content-Length with Transfer-Encoding (CL.TE / TE.CL) ------------------------------
    refused(
        "A1-cl-te-smuggle",
        request(
            POST_CHAT,
            b"Content-Length: 6",
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n" + SMUGGLED,
        ),
        400,
    ),
    refused(
        "A1-te-cl-smuggle",
        request(
            POST_CHAT,
            b"Transfer-Encoding: chunked",
            b"Content-Length: 3",
            body=b"2\r\n{}\r\n0\r\n\r\n" + SMUGGLED,
        ),
        400,
    ),
    refused(
        "A1-cl0-te",
        request(POST_CHAT, b"Content-Length: 0", b"Transfer-Encoding: chunked", body=CHUNKED_BODY),
        400,
    ),
    # -- A2: Transfer-Encoding variants ---------------------------------------------------------
    refused(
        "A2-te-twice",
        request(
            POST_CHAT,
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: chunked",
            body=CHUNKED_BODY,
        ),
        400,
        501,
    ),
    refused(
        "A2-te-chunked-then-x",
        request(
            POST_CHAT, b"Transfer-Encoding: chunked", b"Transfer-Encoding: x", body=CHUNKED_BODY
        ),
        400,
        501,
    ),
    refused(
        "A2-te-gzip-chunked",
        request(POST_CHAT, b"Transfer-Encoding: gzip, chunked", body=CHUNKED_BODY),
        400,
        501,
        close=False,
    ),
    refused(
        "A2-te-chunked-gzip",
        request(POST_CHAT, b"Transfer-Encoding: chunked, gzip", body=CHUNKED_BODY),
        400,
        501,
    ),
    refused(
        "A2-te-xchunked",
        request(POST_CHAT, b"Transfer-Encoding: xchunked", body=CHUNKED_BODY),
        400,
        501,
    ),
    refused(
        "A2-te-identity",
        request(POST_CHAT, b"Transfer-Encoding: identity", b"Content-Length: 2", body=b"{}"),
        400,
        501,
    ),
    refused(
        "A2-te-space-before-colon",
        request(POST_CHAT, b"Transfer-Encoding : chunked", body=CHUNKED_BODY),
        400,
        501,
    ),
    # RFC 9110 section 5.6.3: whitespace around a field value is OWS, a tab included, so this
    # is plain chunked framing (once listed among A2's refusals; the RFC decides).
    accepted(
        "A2-te-tab-prefixed-value",
        request(POST_CHAT, b"Transfer-Encoding:\tchunked", body=CHUNKED_BODY),
        "/openai/v1/chat/completions",
    ),
    refused(
        "A2-te-tab-prefixed-line",
        request(POST_CHAT, b"\tTransfer-Encoding: chunked", body=CHUNKED_BODY),
        400,
        501,
    ),
    refused(
        "A2-te-lf-before-colon",
        request(POST_CHAT, b"Transfer-Encoding\n: chunked", body=CHUNKED_BODY),
        400,
        501,
    ),
    # -- A3: duplicate Content-Length -----------------------------------------------------------
    refused(
        "A3-cl-differing",
        request(POST_CHAT, b"Content-Length: 2", b"Content-Length: 3", body=b"{}x"),
        400,
    ),
    refused("A3-cl-list-differing", request(POST_CHAT, b"Content-Length: 2, 3", body=b"{}x"), 400),
    # Identical duplicates: RFC 9112 section 6.3 lets a recipient reject them or fold them into
    # one; either way the upstream sees one framing (checked by paths + test_b19 framing).
    Case(
        "A3-cl-identical",
        (request(POST_CHAT, b"Content-Length: 2", b"Content-Length: 2", CLOSE, body=b"{}"),),
        (frozenset({200, 400}),),
        (UPSTREAM_CHAT_PATH,),
        close=False,
    ),
    # -- A4: obs-fold ---------------------------------------------------------------------------
    refused("A4-obs-fold-value", request(GET_MODELS, b"X-A: a", b" b", CLOSE), 400),
    refused("A4-obs-fold-tab", request(GET_MODELS, b"X-A: a", b"\tb", CLOSE), 400),
    refused(
        "A4-obs-fold-cl", request(POST_CHAT, b"Content-Length:", b" 2", CLOSE, body=b"{}"), 400
    ),
    refused(
        "A4-obs-fold-te",
        request(POST_CHAT, b"Transfer-Encoding:", b" chunked", CLOSE, body=CHUNKED_BODY),
        400,
    ),
    # -- A5: bad chunk framing ------------------------------------------------------------------
    refused(
        "A5-chunk-data-overrun-cve-2025-43859",
        request(POST_CHAT, b"Transfer-Encoding: chunked", body=b"2\r\n{}XX0\r\n\r\n" + SMUGGLED),
        400,
    ),
    refused(
        "A5-chunk-size-not-hex",
        request(POST_CHAT, b"Transfer-Encoding: chunked", body=b"zz\r\n{}\r\n0\r\n\r\n"),
        400,
    ),
    refused(
        "A5-chunk-size-overflow",
        request(
            POST_CHAT,
            b"Transfer-Encoding: chunked",
            body=b"FFFFFFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n",
        ),
        400,
    ),
    refused(
        "A5-chunk-size-negative",
        request(POST_CHAT, b"Transfer-Encoding: chunked", body=b"-2\r\n{}\r\n0\r\n\r\n"),
        400,
    ),
    refused(
        "A5-chunk-no-crlf-after-data",
        request(POST_CHAT, b"Transfer-Encoding: chunked", body=b"2\r\n{}0\r\n\r\n"),
        400,
    ),
    refused(
        "A5-chunk-bare-lf",
        request(POST_CHAT, b"Transfer-Encoding: chunked", body=b"2\n{}\n0\n\n"),
        400,
    ),
    # -- A6: absolute-form targets --------------------------------------------------------------
    refused(
        "A6-absolute-http",
        request(
            b"POST http://{EVIL}/openai/deployments/d/chat/completions HTTP/1.1",
            b"Content-Length: 2",
            CLOSE,
            body=b"{}",
        ),
        400,
        404,
    ),
    refused(
        "A6-absolute-https",
        request(
            b"POST https://{EVIL}/openai/deployments/d/chat/completions HTTP/1.1",
            b"Content-Length: 2",
            CLOSE,
            body=b"{}",
        ),
        400,
        404,
    ),
    refused("A6-absolute-empty-path", request(b"GET http://{EVIL} HTTP/1.1", CLOSE), 400, 404),
    refused(
        "A6-absolute-evil-host-header",
        request(b"GET http://{EVIL3}/v1/models HTTP/1.1", CLOSE, host=b"{EVIL3}"),
        400,
        403,
        404,
    ),
    # -- A7: other request forms ----------------------------------------------------------------
    refused("A7-connect", request(b"CONNECT {EVIL} HTTP/1.1", host=b"{EVIL}"), 400, 405),
    refused("A7-options-asterisk", request(b"OPTIONS * HTTP/1.1", CLOSE), 400, 404, 405),
    refused("A7-unknown-method", request(b"FOO /v1/models HTTP/1.1", CLOSE), 400, 405, 501),
    refused("A7-lowercase-method", request(b"get /v1/models HTTP/1.1", CLOSE), 400, 405, 501),
    refused(
        "A7-http-0.9-request-line",
        b"GET /v1/models\r\n\r\n",
        400,
        505,
    ),
    # -- A8: Host problems ----------------------------------------------------------------------
    refused(
        "A8-http11-no-host",
        request(GET_MODELS, CLOSE, host=None),
        400,
    ),
    refused(
        "A8-two-host-headers",
        request(GET_MODELS, b"Host: localhost", CLOSE),
        400,
    ),
    refused(
        "A8-two-host-headers-evil-first",
        request(GET_MODELS, b"Host: 127.0.0.1", CLOSE, host=b"evil.example"),
        400,
        403,
    ),
    refused(
        "A8-http10-no-host",
        request(b"GET /v1/models HTTP/1.0", host=None),
        400,
    ),
    refused(
        "A8-empty-host",
        request(GET_MODELS, b"Host:", CLOSE, host=None),
        400,
        403,
    ),
    # -- A9: size limits ------------------------------------------------------------------------
    accepted("A9-8KiB-header-block", request(GET_MODELS, b"X-Big: " + b"a" * 8000, CLOSE), MODELS),
    Case(
        "A9-16KiB-header-block",
        (request(GET_MODELS, b"X-Big: " + b"a" * 16000, CLOSE),),
        (frozenset({200, 400, 431}),),
        (MODELS,),
        close=False,
    ),
    refused(
        "A9-64KiB-header-block",
        request(GET_MODELS, b"X-Big: " + b"a" * 65536, CLOSE),
        400,
        431,
    ),
    refused(
        "A9-1MiB-header-block",
        request(GET_MODELS, b"X-Big: " + b"a" * 2**20, CLOSE),
        400,
        431,
    ),
    refused(
        "A9-10000-headers",
        request(GET_MODELS, *(b"X-%d: a" % i for i in range(10_000)), CLOSE),
        400,
        431,
    ),
    refused(
        "A9-100KiB-request-line",
        request(b"GET /v1/models?" + b"a" * 102_400 + b" HTTP/1.1", CLOSE),
        400,
        414,
        431,
    ),
    # -- A10: body limits -----------------------------------------------------------------------
    refused("A10-cl-10GB-no-body", request(POST_CHAT, b"Content-Length: 10000000000"), 413),
    refused("A10-cl-negative", request(POST_CHAT, b"Content-Length: -1", body=b"{}"), 400),
    refused("A10-cl-plus", request(POST_CHAT, b"Content-Length: +5", body=b"{}"), 400),
    refused("A10-cl-hex", request(POST_CHAT, b"Content-Length: 0x10", body=b"{}"), 400),
    refused("A10-cl-exponent", request(POST_CHAT, b"Content-Length: 1e3", body=b"{}"), 400),
    refused(
        "A10-cl-25-digits", request(POST_CHAT, b"Content-Length: " + b"9" * 25, body=b"{}"), 400
    ),
    refused("A10-cl-empty", request(POST_CHAT, b"Content-Length: ", body=b"{}"), 400),
    # -- A11: illegal bytes ---------------------------------------------------------------------
    refused("A11-nul-in-value", request(GET_MODELS, b"X-A: a\x00b", CLOSE), 400),
    refused("A11-nul-in-name", request(GET_MODELS, b"X\x00A: ab", CLOSE), 400),
    refused("A11-cr-in-value", request(GET_MODELS, b"X-A: a\rb", CLOSE), 400),
    refused("A11-lf-in-value", request(GET_MODELS, b"X-A: a\nb", CLOSE), 400),
    refused("A11-paren-in-name", request(GET_MODELS, b"X(A): ab", CLOSE), 400),
    refused("A11-space-in-name", request(GET_MODELS, b"X A: ab", CLOSE), 400),
    refused("A11-non-ascii-target", request(b"GET /v1/mod\xc3\xa9ls HTTP/1.1", CLOSE), 400),
    refused("A11-control-in-target", request(b"GET /v1/mo\x01dels HTTP/1.1", CLOSE), 400),
    refused("A11-bare-lf", b"GET /v1/models HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n\n", 400),
    refused("A11-bare-cr", b"GET /v1/models HTTP/1.1\rHost: 127.0.0.1\rConnection: close\r\r", 400),
    refused("A11-non-utf8-value", request(GET_MODELS, b"X-A: \xff\xfe", CLOSE), 400),
    # -- A12: pipelining ------------------------------------------------------------------------
    Case(
        "A12-pipelined-second-disallowed",
        (request(GET_MODELS) + request(b"GET /etc/passwd HTTP/1.1", CLOSE),),
        (frozenset({200}), frozenset({404})),
        (MODELS, None),
    ),
    Case(
        "A12-pipelined-second-traversal",
        (
            request(POST_CHAT, b"Content-Length: 2", body=b"{}")
            + request(b"GET /v1/models/../../openai/files HTTP/1.1", CLOSE),
        ),
        (frozenset({200}), frozenset({400, 404})),
        (UPSTREAM_CHAT_PATH, None),
    ),
    Case(
        "A12-pipelined-refused-then-allowed",
        (request(GET_MODELS, host=b"evil.example") + request(GET_MODELS, CLOSE),),
        (frozenset({403}), frozenset({200})),
        (None, MODELS),
    ),
    # -- A13: Expect: 100-continue --------------------------------------------------------------
    Case(
        "A13-expect-small-body",
        (
            request(POST_CHAT, b"Expect: 100-continue", b"Content-Length: 14", CLOSE),
            b'{"model": "m"}',
        ),
        (frozenset({100}), frozenset({200})),
        (None, UPSTREAM_CHAT_PATH),
        close=False,
        pause=0.3,
    ),
    refused(
        "A13-expect-oversized-cl",
        request(POST_CHAT, b"Expect: 100-continue", b"Content-Length: 10000000000"),
        413,
    ),
]


def run_case(stack: Stack, evil: EvilListeners, case: Case) -> Exchange:
    """Send one corpus case and check it against its expected outcome and the invariants."""
    assert stack.proxy is not None
    before = len(stack.foundry.journal)
    log_from = proxy_log_lines(stack)
    pieces = [fill(p, stack, evil) for p in case.pieces]
    ex = exchange(
        stack.proxy.port,
        pieces,
        expect=len(case.statuses),
        linger=2.0 if case.close else 0.3,
        pause=case.pause,
    )
    assert_healthy(stack, evil, log_from)
    assert_clean_answer(stack, ex)
    new = [e.raw_path for e in stack.foundry.journal[before:]]
    upstream_answered = [i for i, r in enumerate(ex.responses) if r.header(FROM_UPSTREAM)]
    meant = [case.paths[i] if i < len(case.paths) else None for i in upstream_answered]
    assert new == [p for p in meant if p is not None], (
        f"{case.id}: the upstream saw {new}; answers {ex.statuses}"
    )
    assert None not in meant, f"{case.id}: forwarded although it should not be: {new}"
    wrong = f"{case.id}: answers {ex.statuses}, expected {case.statuses}:\n{ex.text[:600]}"
    assert len(ex.statuses) == len(case.statuses), wrong
    assert all(s in ok for s, ok in zip(ex.statuses, case.statuses, strict=True)), wrong
    if case.close:
        assert ex.closed, f"{case.id}: the connection stayed open after {ex.statuses}"
    return ex


def _params() -> list[object]:
    out: list[object] = []
    for case in CORPUS:
        marks = list(case.marks)
        if case.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
def test_a1_to_a13_corpus(stack: Stack, evil: EvilListeners, case: Case) -> None:
    """A1-A13: each corpus entry gets its expected answer, and the invariants hold."""
    run_case(stack, evil, case)


def test_a1_cl_te_is_refused_and_connection_closed(stack: Stack, evil: EvilListeners) -> None:
    """A1: CL+TE -> 400 and close; the smuggled GET /openai/files never reaches the upstream."""
    case = next(c for c in CORPUS if c.id == "A1-cl-te-smuggle")
    ex = run_case(stack, evil, case)
    assert ex.statuses == [400]
    assert not stack.foundry.entries("/files")


def test_a13_expect_is_not_forwarded(stack: Stack, evil: EvilListeners) -> None:
    """A13: a small body after 100 Continue is forwarded whole, without the Expect header."""
    case = next(c for c in CORPUS if c.id == "A13-expect-small-body")
    before = len(stack.foundry.journal)
    run_case(stack, evil, case)
    (entry,) = stack.foundry.journal[before:]
    assert entry.header("expect") == []
    assert entry.body_len == len(b'{"model": "m"}')


def test_a13_oversized_body_gets_413_without_100_continue(
    stack: Stack, evil: EvilListeners
) -> None:
    """A13/A10: an oversized Content-Length is refused before any body is asked for."""
    case = next(c for c in CORPUS if c.id == "A13-expect-oversized-cl")
    ex = run_case(stack, evil, case)
    assert b"100 Continue" not in ex.data
    assert ex.statuses == [413]


def test_a9_memory_growth_is_bounded(stack: Stack, evil: EvilListeners) -> None:
    """A9: huge header blocks and request lines leave the process alive, with RSS growth
    (peak included) under 100x the input (Envoy's amplification bar)."""
    assert stack.proxy is not None
    pid = stack.proxy.proc.pid
    ids = (
        "A9-64KiB-header-block",
        "A9-1MiB-header-block",
        "A9-10000-headers",
        "A9-100KiB-request-line",
    )
    for case in (c for c in CORPUS if c.id in ids):
        data = fill(case.data, stack, evil)
        rss_before = rss_kb(pid)
        ex = exchange(stack.proxy.port, data, linger=0.3)
        growth_kib = max(rss_kb(pid) - rss_before, peak_rss_kb(pid) - rss_before)
        assert growth_kib * 1024 < 100 * len(data), (case.id, growth_kib, len(data))
        assert_healthy(stack, evil)
        assert_clean_answer(stack, ex)


# -- A14: fuzzing -------------------------------------------------------------------------------

# Small corpus entries only: mutating (and sending) the 1 MiB ones would dominate the run time.
SEEDS = [c.data for c in CORPUS if len(c.data) < 20_000]
TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b",",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: Upgrade\r\nUpgrade: h2c\r\n",
    b"Host: evil.example\r\n",
    b"Host: {EVIL}\r\n",
    b"X-Forwarded-Host: {EVIL}\r\n",
    b"0\r\n\r\n",
    b"/../",
    b"%2f",
    b"%2e%2e",
    b"//",
    b"http://{EVIL}/",
    b"https://{EVIL3}/v1/",
    b"\xff",
    b"\xc0\xae",
    b"\r\n\r\nGET /openai/files HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
]


# Every mutant sent in this process: a late upstream request is matched against all of them.
_SENT: list[bytes] = []


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            token = draw(st.one_of(st.sampled_from(TOKENS), st.binary(min_size=1, max_size=8)))
            data[at:at] = token
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


def check_mutant(stack: Stack, evil: EvilListeners, data: bytes, sent: list[bytes]) -> None:
    """A14 invariants for one mutant: alive, no 500 or traceback, no canary, no evil hits,
    and anything the upstream saw is a clean path that some request we sent asked for."""
    assert stack.proxy is not None
    data = fill(data, stack, evil)
    sent.append(data)
    before = len(stack.foundry.journal)
    log_from = proxy_log_lines(stack)
    ex = exchange(stack.proxy.port, data, timeout=3.0, linger=0.05, half_close=0.15)
    assert_healthy(stack, evil, log_from)
    assert_clean_answer(stack, ex)
    for entry in stack.foundry.journal[before:]:
        problem = unsafe_upstream_path(entry.raw_path)
        assert problem is None, f"{entry.raw_path!r} reached the upstream: {problem}; sent {data!r}"
        assert any(
            local.encode() in s for local in local_candidates(entry.raw_path) for s in sent
        ), f"{entry.raw_path!r} reached the upstream but no request asked for it"
        assert len(entry.header("authorization")) == 1
        assert entry.token_serial is not None


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=mutated())
def test_a14_mutated_corpus_keeps_the_invariants(
    stack: Stack, evil: EvilListeners, data: bytes
) -> None:
    """A14 (bounded, deterministic): byte flips, insertions, deletions and truncations of the
    A1-A13 corpus never crash the proxy, reach another host or leak a token."""
    check_mutant(stack, evil, data, _SENT)


FUZZ_EXAMPLES = int(os.environ.get("FOUNDRY_PROXY_FUZZ_EXAMPLES", "0") or 0)


@pytest.mark.fuzz
@pytest.mark.skipif(FUZZ_EXAMPLES <= 0, reason="set FOUNDRY_PROXY_FUZZ_EXAMPLES=N to fuzz")
@settings(
    max_examples=max(FUZZ_EXAMPLES, 1),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=mutated())
def test_a14_long_fuzz(stack: Stack, evil: EvilListeners, data: bytes) -> None:
    """A14 (long, random): the same invariants for FOUNDRY_PROXY_FUZZ_EXAMPLES mutants."""
    check_mutant(stack, evil, data, _SENT)


def test_a12_answer_to_head_comes_before_a_pipelined_refusal(
    stack: Stack, evil: EvilListeners
) -> None:
    """A12: answers to pipelined HEAD requests (no body follows their heads, which
    proxy/cycle_transport.py holds for one) go out whole and in order, and a malformed request
    behind them is refused after them."""
    assert stack.proxy is not None
    # Past FOUNDRY_PROXY_MAX_PIPELINED (8), and large enough to be parsed a message at a time.
    heads = request(b"HEAD /healthz HTTP/1.1", b"X-Pad: " + b"p" * 2000) * 12
    ex = exchange(stack.proxy.port, heads + b"NOT A REQUEST\r\n\r\n", expect=13, linger=1.0)
    lines = [line[:12] for line in ex.data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert len(lines) >= 2, ex.text[:600]
    assert lines[-1] == b"HTTP/1.1 400", lines
    assert set(lines[:-1]) == {b"HTTP/1.1 200"}, lines
    assert ex.closed
