"""The proxy fits its own open-file limit to FOUNDRY_PROXY_MAX_CONNECTIONS (proxy/server.py):
started with the common soft limit of 1024 or less, it could not accept the connections its cap
allows, and accept() failed long before the cap answered anyone 503."""

from __future__ import annotations

import re
import resource
import sys
from collections.abc import Iterator

import httpx2
import pytest

from tests.e2e.stack import LISTENING, Stack
from tests.security.floods import CHAT
from tests.support.processes import Child

pytestmark = pytest.mark.e2e

# Sets the open-file limits, then becomes `python -m proxy` (same pid), as a shell's ulimit or
# prlimit would.
_LIMITED = (
    "import os, resource, sys; "
    "soft, hard = int(sys.argv[1]), int(sys.argv[2]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'proxy', '--port', '0'])"
)


def _soft_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    return int(line.split()[3])


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack(FOUNDRY_PROXY_LOG_LEVEL="info", FOUNDRY_PROXY_ACCESS_LOG="off")
    try:
        yield s
    finally:
        s.close()


def _start(stack: Stack, soft: int, hard: int, **env: str) -> tuple[Child, str]:
    child = Child([sys.executable, "-c", _LIMITED, str(soft), str(hard)], env=stack.env | env)
    try:
        found = child.wait_for_line(LISTENING, 30)
        assert found is not None, "proxy did not start:\n" + "".join(child.out)
        url = f"http://127.0.0.1:{found.group(1)}"
        r = httpx2.post(url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert r.status_code == 200, r.text[:300]
    except BaseException:
        child.end()
        raise
    return child, url


def test_a_low_soft_limit_is_raised(stack: Stack) -> None:
    """Soft limit 256 with a hard limit that allows more: raised to 2 x the connection cap plus
    headroom, without a warning."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * 1000 + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs a hard RLIMIT_NOFILE of {wanted}; it is {hard} here")
    child, _ = _start(stack, 256, hard, FOUNDRY_PROXY_MAX_CONNECTIONS="1000")
    try:
        assert _soft_limit(child.proc.pid) == wanted
        assert "open-file limit" not in "".join(child.out)
    finally:
        child.stop()


def test_a_hard_limit_too_low_is_named_in_a_warning(stack: Stack) -> None:
    """Hard limit 1024 with the default cap of 2048 connections: the soft limit goes up to the
    hard one, and a warning names the setting, the limit and what to do."""
    child, _ = _start(stack, 512, 1024)
    try:
        assert _soft_limit(child.proc.pid) == 1024
        log = "".join(child.out)
        (line,) = [line for line in log.splitlines() if "open-file limit" in line]
        assert "FOUNDRY_PROXY_MAX_CONNECTIONS=2048" in line
        assert re.search(r"open-file limit is 1024 \(hard limit 1024\)", line), line
        assert "WARNING" in line.upper()
    finally:
        child.stop()
