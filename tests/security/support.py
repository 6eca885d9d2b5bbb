"""Shared checks for the security suite: the invariants every case asserts (docs/security.md:
the process is alive, no 500 or traceback, no canary in an answer, nothing reached another host)
and helpers to read what the upstream saw."""

from __future__ import annotations

import re

from tests.e2e.stack import Stack
from tests.fakes.evil import EvilListeners
from tests.support.rawsock import Exchange

# Local prefix -> upstream prefix (docs/routes.md, "Routes").
ROUTES = (
    ("/v1/", "/openai/v1/"),
    ("/openai/", "/openai/"),
    ("/models/", "/models/"),
    ("/api/projects/", "/api/projects/"),
)
# What the proxy logs when an exception escapes the app (uvicorn) or a task dies (asyncio).
CRASH_MARKERS = ("Traceback", "Exception in ASGI application", "Task exception was never retrieved")


def mapped(local_path: str) -> str | None:
    """The upstream path docs/routes.md maps a local path to, or None when it is not a route."""
    for local, upstream in ROUTES:
        if local_path.startswith(local):
            return upstream + local_path[len(local) :]
    return None


def local_candidates(upstream_path: str) -> list[str]:
    """Every local path that maps onto ``upstream_path``."""
    return [
        local + upstream_path[len(upstream) :]
        for local, upstream in ROUTES
        if upstream_path.startswith(upstream)
    ]


_SAFE = re.compile(r"^/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$")
_BAD_ESCAPE = re.compile(r"%(2[eEfF5]|5[cC]|[01][0-9a-fA-F]|7[fF]|[89a-fA-F][0-9a-fA-F])")


def unsafe_upstream_path(path: str) -> str | None:
    """Why ``path`` should never have reached the upstream, or None if it is a clean path."""
    if not any(path.startswith(upstream) for _, upstream in ROUTES):
        return "not under a proxied route"
    if not _SAFE.match(path):
        return "characters outside RFC 3986 pchar"
    segments = path.split("/")[1:]
    if any(s in ("", ".", "..") or s.startswith((".;", "..;")) for s in segments):
        return "empty or dot segment"
    if _BAD_ESCAPE.search(path):
        return "encoded dot, slash, percent, backslash, control or non-ASCII"
    return None


def proxy_log_lines(stack: Stack) -> int:
    assert stack.proxy is not None
    return len(stack.proxy.lines)


def assert_healthy(stack: Stack, evil: EvilListeners, log_from: int = 0) -> None:
    """The proxy is alive, logged no crash since ``log_from``, and nothing hit an evil host."""
    assert stack.proxy is not None
    assert stack.proxy.proc.poll() is None, "the proxy process died:\n" + stack.proxy.log[-3000:]
    new_log = "".join(stack.proxy.lines[log_from:])
    crashes = [m for m in CRASH_MARKERS if m in new_log]
    assert not crashes, f"the proxy logged {crashes}:\n{new_log[-3000:]}"
    assert evil.hits == [], f"an evil listener was reached: {evil.hits}"


def assert_clean_answer(stack: Stack, ex: Exchange) -> None:
    """No 500, no traceback and no token or secret in anything the proxy sent back."""
    assert 500 not in ex.statuses, ex.text[:2000]
    assert "Traceback" not in ex.text
    assert not stack.leaks(ex.text), "a token or secret reached a client"


def fill(data: bytes, stack: Stack, evil: EvilListeners) -> bytes:
    """``data`` with its placeholders filled in: ``{EVIL}`` and ``{EVIL3}`` the addresses of the
    evil listeners (on 127.0.0.2 and 127.0.0.3), ``{PORT}`` the proxy's port."""
    assert stack.proxy is not None
    return (
        data.replace(b"{EVIL}", evil.authorities[0].encode())
        .replace(b"{EVIL3}", evil.authorities[1].encode())
        .replace(b"{PORT}", str(stack.proxy.port).encode())
    )
