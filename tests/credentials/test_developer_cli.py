"""AzureCli and AzureDeveloperCli against fake az/azd executables (tests/fakes/cli.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.credentials.base import AccessToken
from proxy.credentials.developer_cli import AzureCli, AzureDeveloperCli
from proxy.errors import AuthenticationFailed, CredentialError, CredentialUnavailable
from tests.fakes.cli import CliName, install_fake_cli, last_pid, read_calls, write_control

SCOPE = "https://cognitiveservices.azure.com/.default"
RESOURCE = "https://cognitiveservices.azure.com"
TENANT = "11111111-2222-3333-4444-555555555555"
# Token-shaped, so a leak into a message would also have to get past the JWT scrubber.
TOKEN = "eyJhbGciOiJub25lIn0.eyJzZWNyZXQiOiJjbGktdG9rZW4ifQ.c2lnbmF0dXJlLXRoYXQtbXVzdC1ub3QtbGVhaw"

Cli = AzureCli | AzureDeveloperCli


def get(cli: Cli, scope: str = SCOPE) -> AccessToken:
    return asyncio.run(cli.get_token(scope))


def failure(cli: Cli, scope: str = SCOPE) -> CredentialError:
    with pytest.raises(CredentialError) as caught:
        get(cli, scope)
    error = caught.value
    for text in (str(error), error.message, error.hint, repr(error)):
        assert TOKEN not in text
        assert "c2lnbmF0dXJlLXRoYXQtbXVzdC1ub3QtbGVhaw" not in text
    return error


def fake(directory: Path, name: CliName, **control: object) -> Cli:
    path = install_fake_cli(directory, name)
    write_control(directory, name, token=TOKEN, **control)
    return (AzureCli if name == "az" else AzureDeveloperCli)(executable=str(path))


def pairs(argv: list[str]) -> set[tuple[str, str]]:
    return set(itertools.pairwise(argv))


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 4-5 h behind UTC, for this process and the fakes it starts."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    assert time.timezone != 0
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


# -- az ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", [None, TENANT])
def test_az_success_prefers_expires_on(tmp_path: Path, tenant: str | None) -> None:
    path = install_fake_cli(tmp_path, "az")
    # expiresOn disagrees on purpose: only expires_on may be used when both are there.
    write_control(
        tmp_path,
        "az",
        token=TOKEN,
        expires_on=int(time.time()) + 1234,
        expiresOn="2001-01-01 00:00:00.000000",
    )
    token = get(AzureCli(tenant, executable=str(path)))
    assert token.token == TOKEN
    assert 1225 < token.expires_in <= 1234
    [argv] = read_calls(tmp_path, "az")
    assert argv[:2] == ["account", "get-access-token"]
    assert ("--output", "json") in pairs(argv)
    assert ("--resource", RESOURCE) in pairs(argv)
    assert (("--tenant", TENANT) in pairs(argv)) is (tenant is not None)
    assert ("--tenant" in argv) is (tenant is not None)


def test_az_found_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake(tmp_path, "az")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert get(AzureCli()).token == TOKEN
    assert len(read_calls(tmp_path, "az")) == 1


def test_az_expires_on_as_text(tmp_path: Path) -> None:
    expires_on = int(time.time()) + 2000
    answer = {"accessToken": TOKEN, "expires_on": str(expires_on), "tokenType": "Bearer"}
    cli = fake(tmp_path, "az", mode="raw", stdout=json.dumps(answer))
    assert 1990 < get(cli).expires_in <= 2000


@pytest.mark.usefixtures("new_york")
def test_az_legacy_expires_on_is_local_time(tmp_path: Path) -> None:
    cli = fake(tmp_path, "az", legacy_only=True, expires_on=int(time.time()) + 1800)
    # Read as UTC it would be off by the 4-5 h between New York and UTC.
    assert 1790 < get(cli).expires_in <= 1800


def test_az_not_logged_in(tmp_path: Path) -> None:
    error = failure(fake(tmp_path, "az", mode="not-logged-in"))
    assert isinstance(error, AuthenticationFailed)
    assert error.code == "cli_not_logged_in"
    assert error.message == "the Azure CLI is not logged in"
    assert "az login" in error.hint


def test_az_aadsts(tmp_path: Path) -> None:
    # The real message also says to run `az login`; the Entra code is the more precise answer.
    error = failure(fake(tmp_path, "az", mode="aadsts", aadsts=70043))
    assert isinstance(error, AuthenticationFailed)
    assert error.code == "AADSTS70043"
    assert "AADSTS70043: The refresh token has expired" in error.message
    assert "Trace ID" not in error.message
    assert "az login" in error.hint


def test_az_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    error = failure(AzureCli())
    assert isinstance(error, AuthenticationFailed)
    assert error.code == "cli_not_installed"
    assert error.message == "the Azure CLI (az) is not installed or not on PATH"
    assert "https://learn.microsoft.com/cli/azure/install-azure-cli" in error.hint
    assert "az login" in error.hint


def test_exit_127_means_not_installed(tmp_path: Path) -> None:
    cli = fake(tmp_path, "az", mode="raw", exit=127, stderr="az: python3: not found\n")
    error = failure(cli)
    assert isinstance(error, AuthenticationFailed)
    assert error.code == "cli_not_installed"


def test_other_failure_is_transient_with_one_line(tmp_path: Path) -> None:
    error = failure(fake(tmp_path, "az", mode="crash"))
    assert isinstance(error, CredentialUnavailable)
    assert error.code == "cli_failed"
    assert error.message == "the Azure CLI failed: KeyError: 'boom'"
    assert "az account get-access-token --resource" in error.hint


def test_stderr_is_trimmed_and_scrubbed(tmp_path: Path) -> None:
    stderr = "WARNING: a new version is available\nERROR: unexpected " + TOKEN + " x" * 400
    error = failure(fake(tmp_path, "az", mode="raw", exit=2, stderr=stderr))
    assert isinstance(error, CredentialUnavailable)
    assert error.message.startswith("the Azure CLI failed: unexpected [redacted] x x")
    assert len(error.message) < 350


# -- timeout and cancellation --------------------------------------------------------------------


def test_timeout_kills_the_cli(tmp_path: Path) -> None:
    path = install_fake_cli(tmp_path, "az")
    write_control(tmp_path, "az", mode="sleep", sleep=30)
    started = time.monotonic()
    error = failure(AzureCli(executable=str(path), timeout=0.5))
    assert time.monotonic() - started < 5
    assert isinstance(error, CredentialUnavailable)
    assert error.code == "cli_timeout"
    # Killed and reaped: not running, and not left as a zombie either.
    assert gone(last_pid(tmp_path, "az"))


def test_timeout_kills_what_a_wrapper_script_started(tmp_path: Path) -> None:
    """The real az is a shell script that runs Python without exec."""
    python_cli = install_fake_cli(tmp_path, "az")
    write_control(tmp_path, "az", mode="sleep", sleep=30)
    wrapper = tmp_path / "bin" / "az"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\n"{python_cli}" "$@"\necho after\n')
    wrapper.chmod(0o755)
    failure(AzureCli(executable=str(wrapper), timeout=0.5))
    pid = last_pid(tmp_path, "az")
    # The orphaned grandchild is reaped by init, which may take a moment.
    deadline = time.monotonic() + 5
    while not gone(pid) and _state(pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid) or _state(pid) == "Z"


def _state(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return status.rsplit(")", 1)[1].split()[0]


def test_cancellation_kills_the_cli(tmp_path: Path) -> None:
    cli = fake(tmp_path, "azd", mode="sleep", sleep=30)

    async def cancel_soon() -> None:
        task = asyncio.create_task(cli.get_token(SCOPE))
        while not (tmp_path / "azd.pid").exists():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    assert gone(last_pid(tmp_path, "azd"))


# -- azd -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", [None, TENANT])
def test_azd_success(tmp_path: Path, tenant: str | None) -> None:
    path = install_fake_cli(tmp_path, "azd")
    write_control(tmp_path, "azd", token=TOKEN, expires_on=int(time.time()) + 3000)
    token = get(AzureDeveloperCli(tenant, executable=str(path)))
    assert token.token == TOKEN
    assert 2990 < token.expires_in <= 3000
    [argv] = read_calls(tmp_path, "azd")
    assert argv[:2] == ["auth", "token"]
    assert ("--scope", SCOPE) in pairs(argv)
    assert ("--output", "json") in pairs(argv)
    assert "--no-prompt" in argv
    assert (("--tenant-id", TENANT) in pairs(argv)) is (tenant is not None)
    assert ("--tenant-id" in argv) is (tenant is not None)


@pytest.mark.usefixtures("new_york")
def test_azd_expires_on_is_utc_whatever_the_timezone(tmp_path: Path) -> None:
    cli = fake(tmp_path, "azd", expires_on=int(time.time()) + 3600)
    # Read as New York time it would be 4-5 h later than the truth.
    assert 3590 < get(cli).expires_in <= 3600


@pytest.mark.usefixtures("new_york")
def test_azd_expires_on_without_z_is_still_utc(tmp_path: Path) -> None:
    naive = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 3600))
    cli = fake(tmp_path, "azd", mode="raw", stdout=_answer("azd", naive))
    assert 3590 < get(cli).expires_in <= 3600


@pytest.mark.parametrize("json_stderr", [False, True])
def test_azd_not_logged_in(tmp_path: Path, json_stderr: bool) -> None:
    error = failure(fake(tmp_path, "azd", mode="not-logged-in", json_stderr=json_stderr))
    assert isinstance(error, AuthenticationFailed)
    assert error.code == "cli_not_logged_in"
    assert error.message == "the Azure Developer CLI is not logged in"
    assert error.hint == "run `azd auth login`"


@pytest.mark.parametrize("json_stderr", [False, True])
def test_azd_aadsts(tmp_path: Path, json_stderr: bool) -> None:
    error = failure(fake(tmp_path, "azd", mode="aadsts", aadsts=90002, json_stderr=json_stderr))
    assert isinstance(error, AuthenticationFailed)
    assert error.code == "AADSTS90002"
    assert error.message.startswith("the Azure Developer CLI could not get a token: AADSTS90002:")
    assert "{" not in error.message


def test_azd_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    error = failure(AzureDeveloperCli())
    assert isinstance(error, AuthenticationFailed)
    assert error.code == "cli_not_installed"
    assert "https://aka.ms/azd-install" in error.hint


# -- malformed answers ---------------------------------------------------------------------------


def _answer(name: CliName, expires_on: object, token: object = TOKEN) -> str:
    if name == "az":
        return json.dumps({"accessToken": token, "expires_on": expires_on})
    return json.dumps({"token": token, "expiresOn": expires_on})


def _utc(offset: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))


@pytest.mark.parametrize(
    ("name", "stdout"),
    [
        ("az", "not json " + TOKEN),
        ("az", json.dumps([TOKEN])),
        ("az", _answer("az", int(time.time()) + 3600, token="")),
        ("az", _answer("az", None)),
        ("az", _answer("az", int(time.time()) - 10)),
        ("az", _answer("az", int(time.time()) + 2 * 366 * 24 * 3600)),
        ("az", _answer("az", "soon")),
        ("azd", "{" + TOKEN),
        ("azd", _answer("azd", "2024-13-45T99:00:00Z")),
        ("azd", _answer("azd", _utc(-60))),
        ("azd", _answer("azd", _utc(3600), token=None)),
    ],
)
def test_malformed_answer(tmp_path: Path, name: CliName, stdout: str) -> None:
    error = failure(fake(tmp_path, name, mode="raw", stdout=stdout))
    assert isinstance(error, CredentialUnavailable)
    assert error.code == "malformed_token_response"


@pytest.mark.parametrize("scope", ["--debug", "https://x.example/.default --foo"])
def test_values_that_would_be_options_are_refused(tmp_path: Path, scope: str) -> None:
    cli = fake(tmp_path, "azd")
    error = failure(cli, scope)
    assert error.code == "cli_bad_argument"
    assert read_calls(tmp_path, "azd") == []
