"""The command line as users run it: configuration errors, env files, signals."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import httpx2
import pytest

from tests.e2e.stack import CLIENT_ID, TENANT, Stack, clean_environment, run_proxy

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
        "FOUNDRY_PROXY_UPSTREAM": "https://myresource.openai.azure.com",
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


def test_sigterm_lets_an_open_stream_finish(fresh_stack: Stack) -> None:
    """Graceful shutdown: a stream in flight at SIGTERM completes; new connections are refused."""
    s = fresh_stack
    proxy = s.start_proxy()
    result: dict[str, object] = {}

    def stream() -> None:
        body = {"model": "m", "messages": [], "stream": True}
        headers = {"x-fake-chunks": "10", "x-fake-delay": "0.1"}
        with httpx2.stream(
            "POST", proxy.url + "/v1/chat/completions", json=body, headers=headers
        ) as r:
            result["body"] = r.read()

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.4)
    proxy.proc.send_signal(signal.SIGTERM)
    t.join(10)
    assert proxy.proc.wait(10) == 0
    body = result["body"]
    assert isinstance(body, bytes)
    assert body.endswith(b"data: [DONE]\n\n")
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(proxy.url + "/healthz")


def test_workers_share_the_port_and_stop_cleanly(fresh_stack: Stack) -> None:
    """--workers 2: both processes serve, each with its own token; SIGTERM stops them all."""
    s = fresh_stack
    proxy = s.start_proxy("--workers", "2")
    with httpx2.Client() as client:
        statuses = {client.get(proxy.url + "/v1/models").status_code for _ in range(40)}
    assert statuses == {200}
    deadline = time.monotonic() + 10
    while len(s.entra.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(s.entra.calls) == 2, "each worker holds its own token"
    assert proxy.stop(signal.SIGTERM) == 0
    assert "Started parent process" in proxy.log
