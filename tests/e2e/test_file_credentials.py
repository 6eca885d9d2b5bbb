"""Credentials read from files: a mounted client secret and AKS workload identity.

Both files are read again at every token request, so rotation needs no restart.
"""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.e2e.stack import Stack
from tests.support.chat import CHAT
from tests.support.readiness import wait_until

pytestmark = pytest.mark.e2e


def _workload_identity(s: Stack, tmp_path: Path, presented: str, accepted: str) -> None:
    """The pod's projected token holds ``presented``; the app's federated credential accepts
    ``accepted``; no secret anywhere."""
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(presented)
    s.entra.federated_assertion = accepted
    del s.env["AZURE_CLIENT_SECRET"]
    s.env["AZURE_FEDERATED_TOKEN_FILE"] = str(token_file)


def test_secret_file_is_reread_so_rotation_needs_no_restart(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    s = fresh_stack
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(s.secret + "\n")
    del s.env["AZURE_CLIENT_SECRET"]
    s.env["AZURE_CLIENT_SECRET_FILE"] = str(secret_file)
    s.entra.token_lifetime = 3
    proxy = s.start_proxy()
    assert "client secret file" in proxy.log
    assert httpx2.post(s.url + "/v1/chat/completions", json=CHAT).status_code == 200
    # Rotate: Entra now knows only the new secret; the file gets it too.
    rotated = s.secret.replace("CANARY-SECRET-", "CANARY-SECRET-rotated-")
    s.entra.secret = rotated
    secret_file.write_text(rotated)
    calls = len(s.entra.calls)
    assert wait_until(lambda: len(s.entra.calls) > calls and s.entra.calls[-1].status == 200, 6)
    assert httpx2.post(s.url + "/v1/chat/completions", json=CHAT).status_code == 200
    assert rotated not in proxy.log


def test_workload_identity_exchanges_the_projected_token(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    s = fresh_stack
    assertion = (
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphcHAifQ.c2ln"
    )
    _workload_identity(s, tmp_path, presented=assertion, accepted=assertion)
    proxy = s.start_proxy()
    assert "workload identity" in proxy.log
    assert httpx2.post(s.url + "/v1/chat/completions", json=CHAT).status_code == 200
    assert s.foundry.journal[-1].auth == "ok"
    assert assertion not in proxy.log


def test_workload_identity_mismatch_names_the_federated_credential(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    s = fresh_stack
    _workload_identity(
        s, tmp_path, presented="eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvdGhlciJ9.c2ln", accepted="other"
    )
    s.start_proxy(ready=False)
    assert wait_until(lambda: httpx2.get(s.url + "/readyz").json().get("fix"), 5)
    ready = httpx2.get(s.url + "/readyz").json()
    assert "AADSTS700213" in ready["reason"]
    assert "system:serviceaccount" in ready["fix"]


def test_workload_identity_rotation_under_load(fresh_stack: Stack, tmp_path: Path) -> None:
    """Kubernetes rewrites the projected token in place; the next exchange presents the new
    one, and short-lived Entra tokens roll over with no failed request."""
    from tests.e2e.stack import chat_load

    s = fresh_stack
    first = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YSJ9.Zmlyc3Q"
    _workload_identity(s, tmp_path, presented=first, accepted=first)
    s.entra.token_lifetime = 4
    s.start_proxy()
    ok, failures = chat_load(s.url, 3, workers=2)
    rotated = first.replace("Zmlyc3Q", "c2Vjb25k")
    (tmp_path / "azure-identity-token").write_text(rotated)
    s.entra.federated_assertion = rotated
    more, more_failures = chat_load(s.url, 5, workers=2)
    assert failures + more_failures == []
    assert ok + more > 20
    assert len({e.token_serial for e in s.foundry.journal}) >= 3
    assert s.entra.calls[-1].status == 200
