"""Where a secret could leak besides logs and answers (test-plan D38, D39): the command line,
the disk, and the proxy's own endpoints."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx2
import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e


def _files_changed_since(root: Path, since: float) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and path.stat().st_mtime >= since and path.stat().st_size < 2**24:
                found.append(path)
        except OSError:
            continue
    return found


def test_d38_no_secret_on_the_command_line_or_the_disk(fresh_stack: Stack, tmp_path: Path) -> None:
    s = fresh_stack
    started = time.time()
    proxy = s.start_proxy()
    for path in ("/v1/chat/completions", "/v1/nothing", "/v1/status/500", "/v1/redirect?to=x"):
        httpx2.post(s.url + path, json={"model": "m", "messages": []})
    cmdline = Path(f"/proc/{proxy.proc.pid}/cmdline").read_bytes().decode(errors="replace")
    assert not s.leaks(cmdline)
    proxy.stop()
    # The proxy writes no files: nothing under its working directory (the repository) or the
    # temporary directory changed during its run may hold a canary.
    marker = tmp_path / "written-during-the-run"
    marker.write_text("the scan must see this file")
    scanned = []
    for root in (Path.cwd(), Path(tempfile.gettempdir())):
        for path in _files_changed_since(root, started):
            assert not s.leaks(path.read_bytes().decode("latin-1")), path
            scanned.append(path)
    assert marker in scanned


def test_d39_local_endpoints_never_show_a_token_or_the_secret(stack: Stack) -> None:
    answers = [
        httpx2.get(stack.url + "/healthz"),
        httpx2.get(stack.url + "/readyz"),
        httpx2.get(stack.url + "/metrics"),
        httpx2.get(stack.url + "/nowhere"),
        httpx2.post(stack.url + "/v1/a%2fb"),
        httpx2.post(stack.url + "/v1/chat/completions", headers={"Origin": "https://evil"}),
    ]
    for reply in answers:
        text = reply.text + str(reply.headers)
        assert not stack.leaks(text), reply.request.url
        assert "Bearer" not in text
        assert reply.status_code != 500
