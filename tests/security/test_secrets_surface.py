"""Where a secret could leak besides logs and answers (docs/security.md D38, D39): the command line,
the disk, and the proxy's own endpoints."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e


def _files_changed_since(root: Path, since: float) -> Iterator[Path]:
    """Regular files under ``root`` (not .git) modified at or after ``since``. Files and
    directories that vanish or cannot be read while the tree is walked are passed over: other
    programs (other test runs, editors) change the repository too."""
    for directory, subdirectories, names in os.walk(root):  # os.walk skips unreadable dirs
        subdirectories[:] = [d for d in subdirectories if d != ".git"]
        for name in names:
            path = Path(directory, name)
            try:
                info = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_mtime >= since and info.st_size < 2**24:
                yield path


def _text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("latin-1")
    except OSError:  # gone since it was listed, or not ours to read
        return None


def test_d38_no_secret_on_the_command_line_or_the_disk(fresh_stack: Stack, tmp_path: Path) -> None:
    """The proxy writes no files. It is given a temporary directory and a home of its own, and
    runs in the repository: nothing changed there during its run may hold a canary. The
    machine's shared /tmp is not scanned: what other programs write there is not the proxy's,
    and they delete it while the scan reads."""
    s = fresh_stack
    own = {"TMPDIR": tmp_path / "tmp", "HOME": tmp_path / "home"}
    for name, directory in own.items():
        directory.mkdir()
        s.env[name] = str(directory)
    started = time.time()
    proxy = s.start_proxy()
    for path in ("/v1/chat/completions", "/v1/nothing", "/v1/status/500", "/v1/redirect?to=x"):
        httpx2.post(s.url + path, json={"model": "m", "messages": []})
    cmdline = Path(f"/proc/{proxy.proc.pid}/cmdline").read_bytes().decode(errors="replace")
    assert not s.leaks(cmdline)
    proxy.stop()
    marker = own["TMPDIR"] / "written-during-the-run"
    marker.write_text("the scan must see this file")
    scanned = []
    for root in (Path.cwd(), *own.values()):
        for path in _files_changed_since(root, started):
            text = _text(path)
            if text is not None:
                assert not s.leaks(text), path
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
