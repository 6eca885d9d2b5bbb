"""Keyless credentials through the running proxy: managed identity (IMDS, App Service) and the
developer CLIs (az, azd), each chosen by auto-detection, driven with the openai SDK, and rolled
over with short-lived tokens under load without a failed request.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from tests.e2e.stack import Stack, chat_load, openai_client, run_proxy
from tests.fakes.cli import CliName, install_fake_cli, read_calls, write_control
from tests.fakes.egress import ForwardProxy
from tests.fakes.identity import SYSTEM_CLIENT_ID, FakeAppServiceIdentity, FakeImds
from tests.fakes.serve import ServerThread
from tests.support.chat import CHAT
from tests.support.identities import TENANT
from tests.support.readiness import wait_for_status, wait_until

pytestmark = pytest.mark.e2e

RESOURCE = "https://cognitiveservices.azure.com"


def _keyless(s: Stack) -> None:
    """No App Registration at all: what a VM, an App Service or a laptop with `az login` has."""
    for name in ("AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_CLIENT_ID"):
        del s.env[name]


def _ask(s: Stack) -> str:
    reply = openai_client(s).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )
    return str(reply.choices[0].message.content)


@contextmanager
def _serving(app: object) -> Iterator[ServerThread]:
    server = ServerThread(app).start()
    try:
        yield server
    finally:
        server.stop()


def test_imds_is_detected_and_rolls_over_under_load(fresh_stack: Stack) -> None:
    s = fresh_stack
    _keyless(s)
    imds = FakeImds(s.issuer, token_lifetime=4)
    with _serving(imds.app) as server:
        s.env["FOUNDRY_PROXY_IMDS_ENDPOINT"] = server.url
        proxy = s.start_proxy()
        assert "managed identity (IMDS), system-assigned" in proxy.log
        assert (
            "passed over managed identity (App Service): IDENTITY_ENDPOINT and IDENTITY_HEADER "
            "are not set" in proxy.log
        )
        assert _ask(s)
        ok, failures = chat_load(s.url, 8)
    assert failures == []
    assert ok > 20
    assert [e.auth for e in s.foundry.journal if e.auth != "ok"] == []
    assert len({e.token_serial for e in s.foundry.journal}) >= 3, "tokens were not rolled over"
    token_calls = [c for c in imds.calls if c.params.get("resource")]
    assert all(c.headers.get("metadata") == "true" for c in imds.calls)
    assert {c.params["resource"] for c in token_calls} == {RESOURCE}
    # The detection probe asks for no resource, so it mints nothing.
    assert len(imds.calls) == len(token_calls) + 1


def test_user_assigned_identity_by_client_id(fresh_stack: Stack) -> None:
    s = fresh_stack
    _keyless(s)
    user_assigned = "3b1f8a40-5c6d-4e7f-8091-a2b3c4d5e6f7"
    imds = FakeImds(s.issuer, system_assigned=False, assigned={user_assigned})
    egress = ForwardProxy()
    with _serving(imds.app) as server, _serving(egress) as egress_server:
        s.env |= {
            "FOUNDRY_PROXY_IMDS_ENDPOINT": server.url,
            "FOUNDRY_PROXY_CREDENTIAL": "managed-identity",
            "AZURE_CLIENT_ID": user_assigned,
            # Even told to use proxies for everything, IMDS is called directly.
            "FOUNDRY_PROXY_TOKEN_PROXY": egress_server.url,
            "FOUNDRY_PROXY_TRUST_ENV": "true",
            "HTTP_PROXY": egress_server.url,
        }
        proxy = s.start_proxy()
        assert f"user-assigned {user_assigned}" in proxy.log
        assert _ask(s)
    assert imds.calls[-1].params["client_id"] == user_assigned
    # The proxies were in force (the inference call took HTTP_PROXY, as TRUST_ENV asks)...
    assert [target.split("/", 1)[1] for _, target in egress.seen] == ["openai/v1/chat/completions"]
    # ...and IMDS was still called directly: every one of its calls reached the fake itself.
    assert len(imds.calls) >= 1


def test_imds_retries_while_it_is_being_updated(fresh_stack: Stack) -> None:
    """410 means IMDS is updating (entra-docs how-to-use-vm-token): retried, then served."""
    from tests.fakes.identity import Answer

    s = fresh_stack
    _keyless(s)
    imds = FakeImds(s.issuer)
    probe = Answer(400, {"error": "invalid_request", "error_description": "no resource"})
    imds.script.extend([probe, Answer(410, {"error": "gone"})])
    with _serving(imds.app) as server:
        s.env["FOUNDRY_PROXY_IMDS_ENDPOINT"] = server.url
        s.start_proxy(ready=False)
        assert wait_for_status(s.url + "/readyz", 200, 30)
        assert _ask(s)
    assert [c.status for c in imds.calls][:3] == [400, 410, 200]


def test_app_service_identity_never_goes_through_the_token_proxy(fresh_stack: Stack) -> None:
    s = fresh_stack
    _keyless(s)
    header = f"CANARY-SECRET-identity-header-{os.getpid()}"
    identity = FakeAppServiceIdentity(s.issuer, header=header, token_lifetime=4)
    egress = ForwardProxy()
    with _serving(identity.app) as server, _serving(egress) as egress_server:
        s.env |= {
            "IDENTITY_ENDPOINT": server.url + identity.path,
            "IDENTITY_HEADER": header,
            "FOUNDRY_PROXY_TOKEN_PROXY": egress_server.url,
            "HTTP_PROXY": egress_server.url,
        }
        proxy = s.start_proxy()
        assert "managed identity (App Service), system-assigned" in proxy.log
        assert _ask(s)
        ok, failures = chat_load(s.url, 5, workers=2)
        assert header not in proxy.log
    assert failures == []
    assert ok > 10
    assert len({e.token_serial for e in s.foundry.journal}) >= 2, "tokens were not rolled over"
    assert egress.seen == []
    assert identity.calls[-1].params["api-version"] == "2019-08-01"
    assert s.foundry.journal[-1].token_serial is not None
    assert s.issuer.serial(s.issuer.issued[-1]) == len(s.issuer.issued)
    assert identity.calls[-1].params.get("client_id") is None  # system-assigned
    assert SYSTEM_CLIENT_ID  # the fake minted for its system identity


def test_entra_calls_use_the_token_proxy_and_inference_does_not(fresh_stack: Stack) -> None:
    s = fresh_stack
    egress = ForwardProxy()
    with _serving(egress) as egress_server:
        s.env["FOUNDRY_PROXY_TOKEN_PROXY"] = egress_server.url
        s.start_proxy()
        assert _ask(s)
    assert egress.seen, "the token request did not go through FOUNDRY_PROXY_TOKEN_PROXY"
    assert all(target.endswith("/oauth2/v2.0/token") for _, target in egress.seen)
    assert len(s.entra.calls) == len(egress.seen)


class _CliTokens:
    """Keeps the fake CLI's answer fresh: a new short-lived token every ``every`` seconds, as a
    real CLI gets one from its refresh token when the old one nears its end."""

    def __init__(self, s: Stack, directory: Path, name: CliName, lifetime: float) -> None:
        self.s, self.directory, self.name, self.lifetime = s, directory, name, lifetime
        self.stop = threading.Event()
        self.rotate()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def rotate(self) -> None:
        token = self.s.issuer.issue(
            tenant=TENANT,
            client_id="04b07795-8ddb-461a-bbee-02f9e1bf7b46",
            audience=RESOURCE,
            lifetime=self.lifetime,
        )
        expires_on = time.time() + self.lifetime
        write_control(self.directory, self.name, token=token, expires_on=expires_on)

    def _run(self) -> None:
        while not self.stop.wait(self.lifetime / 4):
            self.rotate()

    def __enter__(self) -> _CliTokens:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.mark.parametrize(("name", "kind"), [("az", "Azure CLI"), ("azd", "Azure Developer CLI")])
def test_cli_login_is_detected_cached_and_rolled_over(
    fresh_stack: Stack, tmp_path: Path, name: CliName, kind: str
) -> None:
    s = fresh_stack
    _keyless(s)
    install_fake_cli(tmp_path, name)
    s.env |= {
        "PATH": f"{tmp_path}{os.pathsep}{s.env.get('PATH', '')}",
        # Nothing answers here: detection passes over IMDS quickly.
        "FOUNDRY_PROXY_IMDS_ENDPOINT": "http://127.0.0.1:9",
        "TZ": "America/New_York",  # azd's expiresOn is UTC whatever the local zone
    }
    with _CliTokens(s, tmp_path, name, lifetime=6):
        proxy = s.start_proxy()
        assert f"({kind} login)" in proxy.log
        ok, failures = chat_load(s.url, 8, workers=2)
    assert failures == []
    assert ok > 20
    calls = read_calls(tmp_path, name)
    # Cached and refreshed in the background: a handful of runs, not one per request.
    assert 2 <= len(calls) <= 8, calls
    assert len({e.token_serial for e in s.foundry.journal}) >= 2
    if name == "az":
        assert calls[0][:2] == ["account", "get-access-token"]
        assert calls[0][calls[0].index("--resource") + 1] == RESOURCE
    else:
        assert calls[0][:2] == ["auth", "token"]
        assert calls[0][calls[0].index("--scope") + 1] == RESOURCE + "/.default"


def test_cli_not_logged_in_tells_the_user_to_log_in(fresh_stack: Stack, tmp_path: Path) -> None:
    s = fresh_stack
    _keyless(s)
    install_fake_cli(tmp_path, "az")
    write_control(tmp_path, "az", mode="not-logged-in")
    s.env |= {
        "PATH": f"{tmp_path}{os.pathsep}{s.env.get('PATH', '')}",
        "FOUNDRY_PROXY_CREDENTIAL": "azure-cli",
        "AZURE_TENANT_ID": TENANT,
    }
    s.start_proxy(ready=False)
    assert wait_until(lambda: httpx2.get(s.url + "/readyz").json().get("fix"), 10)
    ready = httpx2.get(s.url + "/readyz").json()
    assert "not logged in" in ready["reason"]
    assert "az login" in ready["fix"]
    reply = httpx2.post(
        s.url + "/v1/chat/completions",
        json=CHAT,
    )
    assert reply.status_code == 503
    assert "az login" in reply.text
    assert read_calls(tmp_path, "az")[0][-2:] == ["--tenant", TENANT]


def test_azure_identity_escape_hatch_is_refreshed_by_the_proxy(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    """FOUNDRY_PROXY_CREDENTIAL=azure-identity: DefaultAzureCredential, narrowed here to its CLI
    credential by azure-identity's own AZURE_TOKEN_CREDENTIALS, behind the proxy's refresher."""
    s = fresh_stack
    _keyless(s)
    install_fake_cli(tmp_path, "az")
    del s.env["AZURE_AUTHORITY_HOST"]  # azure-identity accepts https authorities only
    s.env |= {
        "PATH": f"{tmp_path}{os.pathsep}{s.env.get('PATH', '')}",
        "FOUNDRY_PROXY_CREDENTIAL": "azure-identity",
        "AZURE_TOKEN_CREDENTIALS": "AzureCliCredential",
    }
    with _CliTokens(s, tmp_path, "az", lifetime=6):
        proxy = s.start_proxy()
        assert "azure-identity DefaultAzureCredential" in proxy.log
        assert _ask(s)
        ok, failures = chat_load(s.url, 5, workers=2)
    assert failures == []
    assert ok > 10
    assert len({e.token_serial for e in s.foundry.journal}) >= 2, "no background refresh"


def test_check_names_the_cli_credential(fresh_stack: Stack, tmp_path: Path) -> None:
    import json

    s = fresh_stack
    _keyless(s)
    install_fake_cli(tmp_path, "azd")
    env = s.env | {
        "PATH": f"{tmp_path}{os.pathsep}{s.env.get('PATH', '')}",
        "FOUNDRY_PROXY_IMDS_ENDPOINT": "http://127.0.0.1:9",
    }
    with _CliTokens(s, tmp_path, "azd", lifetime=600):
        result = run_proxy(["check", "--json"], env, timeout=60)
    report = json.loads(result.stdout)
    assert report["ok"] is True, result.stdout
    credential = report["steps"][1]
    assert credential["summary"] == "using the Azure Developer CLI"
    assert "Azure CLI: az is not on PATH" in credential["details"]["passed_over"]
    assert not s.leaks(result.stdout + result.stderr)
