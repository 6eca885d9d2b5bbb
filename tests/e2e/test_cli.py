"""The command line as users run it: configuration errors, env files, signals."""

from __future__ import annotations

import json
import signal
import socket
import threading
from pathlib import Path

import httpx2
import pytest

from tests.e2e.stack import Stack, clean_environment, run_proxy
from tests.fakes.foundry import Entry
from tests.support.identities import CLIENT_ID, TENANT
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e


run = run_proxy


def test_every_missing_setting_is_reported_at_once() -> None:
    result = run([], clean_environment())
    assert result.returncode == 2
    assert "FOUNDRY_PROXY_UPSTREAM: is required" in result.stderr
    assert (
        "no credential configured: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"
        in result.stderr
    )
    assert "config.example.env" in result.stderr


def test_an_explicit_credential_kind_lists_what_it_misses() -> None:
    env = clean_environment() | {
        "FOUNDRY_PROXY_UPSTREAM": "https://myresource.openai.azure.com",
        "FOUNDRY_PROXY_CREDENTIAL": "workload-identity",
    }
    result = run([], env)
    assert result.returncode == 2
    for problem in (
        "FOUNDRY_PROXY_CREDENTIAL=workload-identity needs AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_TENANT_ID: is required for FOUNDRY_PROXY_CREDENTIAL=workload-identity",
        "AZURE_CLIENT_ID: is required for FOUNDRY_PROXY_CREDENTIAL=workload-identity",
    ):
        assert problem in result.stderr


def test_auto_detection_that_finds_nothing_says_what_it_tried(tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    imds = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    env = clean_environment() | {
        "FOUNDRY_PROXY_UPSTREAM": "https://myres.openai.azure.com",
        "FOUNDRY_PROXY_IMDS_ENDPOINT": imds,
        "PATH": str(tmp_path),
    }
    result = run([], env)
    assert result.returncode == 2
    assert "no credential configured" in result.stderr
    assert f"auto-detection: managed identity (IMDS): no Azure IMDS answered at {imds}" in (
        result.stderr
    )
    assert "auto-detection: Azure CLI: az is not on PATH" in result.stderr


def test_invalid_settings_never_echo_the_secret() -> None:
    secret = "CANARY-SECRET-do-not-print-0123456789"
    env = clean_environment() | {
        "FOUNDRY_PROXY_UPSTREAM": "http://myresource.openai.azure.com",
        "AZURE_TENANT_ID": "common",
        "AZURE_CLIENT_ID": "not-a-guid",
        "AZURE_CLIENT_SECRET": secret,
        "FOUNDRY_PROXY_PORT": secret,
    }
    result = run([], env)
    assert result.returncode == 2
    assert "FOUNDRY_PROXY_UPSTREAM: must use https://" in result.stderr
    assert "AZURE_TENANT_ID: 'common' cannot issue app tokens" in result.stderr
    assert (
        "AZURE_CLIENT_ID: must be the App Registration's Application (client) ID" in result.stderr
    )
    assert "FOUNDRY_PROXY_PORT:" in result.stderr
    assert secret not in result.stderr + result.stdout


def test_env_file_typos_are_caught(tmp_path: Path) -> None:
    env_file = tmp_path / "proxy.env"
    env_file.write_text(
        "FOUNDRY_PROXY_UPSTREAM=https://myres.openai.azure.com\n"
        f"AZURE_TENANT_ID={TENANT}\nAZURE_CLIENT_ID={CLIENT_ID}\nAZURE_CLIENT_SECRET=abc~def\n"
        "FOUNDRY_PROXY_READ_TIMEOUTS=30\n"
    )
    result = run(["--env-file", str(env_file)], clean_environment())
    assert result.returncode == 2
    assert "FOUNDRY_PROXY_READ_TIMEOUTS: unknown setting" in result.stderr
    assert "did you mean FOUNDRY_PROXY_READ_TIMEOUT?" in result.stderr
    missing = run(["--env-file", str(tmp_path / "nope.env")], clean_environment())
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr


def test_non_loopback_bind_needs_an_explicit_opt_in() -> None:
    env = clean_environment() | {
        "FOUNDRY_PROXY_UPSTREAM": "https://myres.openai.azure.com",
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "AZURE_CLIENT_SECRET": "abc~def",
    }
    result = run(["--host", "0.0.0.0"], env)
    assert result.returncode == 2
    assert "FOUNDRY_PROXY_ALLOW_REMOTE" in result.stderr


def test_env_file_serves_and_sigterm_exits_cleanly(fresh_stack: Stack, tmp_path: Path) -> None:
    """The proxy runs from an env file alone; SIGTERM ends it with exit code 0."""
    s = fresh_stack
    env_file = tmp_path / "proxy.env"
    keys = (
        "FOUNDRY_PROXY_UPSTREAM",
        "AZURE_AUTHORITY_HOST",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
    )
    env_file.write_text("".join(f"{k}={s.env[k]}\n" for k in keys))
    for k in keys:
        del s.env[k]
    proxy = s.start_proxy("--env-file", str(env_file))
    assert httpx2.get(proxy.url + "/v1/models").status_code == 200
    assert proxy.stop(signal.SIGTERM) == 0
    assert "listening on http://127.0.0.1:" in proxy.log


class StreamInFlight:
    """A streamed chat completion (10 events, 0.1 s apart) read by a thread, under way once
    the upstream has written its first event."""

    def __init__(self, s: Stack, tag: str) -> None:
        self.s = s
        self.tag = tag
        self.body = b""
        self.error: httpx2.HTTPError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert wait_until(self._streaming, 20), "the stream never started upstream"

    def _streaming(self) -> bool:
        return any(e.events for e in self.s.foundry.entries("/chat/completions") if self._ours(e))

    def _ours(self, entry: Entry) -> bool:
        return entry.header("x-test-id") == [self.tag]

    def _read(self) -> None:
        body = {"model": "m", "messages": [], "stream": True}
        headers = {"x-fake-chunks": "10", "x-fake-delay": "0.1", "x-test-id": self.tag}
        try:
            with httpx2.stream(
                "POST", self.s.url + "/v1/chat/completions", json=body, headers=headers, timeout=30
            ) as r:
                self.body = r.read()
        except httpx2.HTTPError as exc:
            self.error = exc

    def finished(self, timeout: float) -> bytes:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream did not finish"
        assert self.error is None, repr(self.error)
        return self.body


def test_sigterm_lets_an_open_stream_finish(fresh_stack: Stack) -> None:
    """Graceful shutdown: a stream in flight at SIGTERM completes; new connections are refused."""
    s = fresh_stack
    proxy = s.start_proxy()
    stream = StreamInFlight(s, "sigterm")
    proxy.proc.send_signal(signal.SIGTERM)
    assert stream.finished(20).endswith(b"data: [DONE]\n\n")
    assert proxy.child.wait(20) == 0
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(proxy.url + "/healthz")


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_sighup_drains_like_sigterm(fresh_stack: Stack, workers: int) -> None:
    """A closing terminal or ssh session sends SIGHUP to the proxy's whole process group (the
    supervisor and its workers too): the stream in flight completes, its access line is
    written, and the proxy exits 0 instead of dying by the signal."""
    s = fresh_stack
    s.env["FOUNDRY_PROXY_ACCESS_LOG"] = "json"
    proxy = s.start_proxy("--workers", str(workers))
    stream = StreamInFlight(s, "sighup")
    proxy.child.signal_group(signal.SIGHUP)
    assert stream.finished(20).endswith(b"data: [DONE]\n\n")
    assert proxy.child.wait(30) == 0, proxy.log
    access = [
        json.loads(line)
        for line in proxy.lines
        if line.startswith('{"time":') and '"/v1/chat/completions"' in line
    ]
    assert [(a["status"], a["streamed"]) for a in access] == [(200, True)], proxy.log
    assert "Traceback" not in proxy.log


def test_help_lists_the_commands() -> None:
    """`demo` and `check` are commands in --help; the proxy's options still need none."""
    helped = run(["--help"], clean_environment())
    assert helped.returncode == 0
    assert "foundry-proxy demo [options]" in helped.stdout
    assert "foundry-proxy check [options]" in helped.stdout
    for command in ("demo", "check"):
        assert f"    {command}  " in helped.stdout, helped.stdout
        sub = run([command, "--help"], clean_environment())
        assert sub.returncode == 0
        assert f"usage: foundry-proxy {command}" in sub.stdout
    misplaced = run(["--port", "0", "demo"], clean_environment())
    assert misplaced.returncode == 2
    assert "options go after the command" in misplaced.stderr


def test_workers_share_the_port_and_stop_cleanly(fresh_stack: Stack) -> None:
    """--workers 2: both processes serve, each with its own token; SIGTERM stops them all."""
    s = fresh_stack
    proxy = s.start_proxy("--workers", "2")
    with httpx2.Client() as client:
        statuses = {client.get(proxy.url + "/v1/models").status_code for _ in range(40)}
    assert statuses == {200}
    wait_until(lambda: len(s.entra.calls) >= 2, 20)
    assert len(s.entra.calls) == 2, "each worker holds its own token"
    assert proxy.stop(signal.SIGTERM) == 0
    assert "Started parent process" in proxy.log
