"""Who may use the proxy and for what: inbound keys (D40), the method and path policy (C29),
the Unix socket listener, and the bind rule.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import httpx2
import pytest

from tests.e2e.stack import Stack, clean_environment, run_proxy
from tests.support import processes
from tests.support.chat import CHAT

pytestmark = pytest.mark.e2e

KEY = "CANARY-SECRET-inbound-key-0123456789"
OTHER_KEY = "CANARY-SECRET-second-key-9876543210"


def test_d40_inbound_keys_are_required_compared_and_stripped(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    s = fresh_stack
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# rotated monthly\n{OTHER_KEY}\n")
    s.env |= {"FOUNDRY_PROXY_API_KEYS": KEY, "FOUNDRY_PROXY_API_KEYS_FILE": str(keys_file)}
    proxy = s.start_proxy()
    url = s.url + "/v1/chat/completions"
    missing = httpx2.post(url, json=CHAT)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = "X" * len(KEY)  # same length: only the comparison can tell
    assert (
        httpx2.post(url, json=CHAT, headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
    )
    assert httpx2.post(url, json=CHAT, headers={"api-key": wrong}).status_code == 401
    assert s.foundry.journal == [], "an unauthenticated request reached the upstream"
    # Accepted as the OpenAI SDKs send it, as AzureOpenAI sends it, and from the file.
    from openai import OpenAI

    with OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0) as client:
        reply = client.chat.completions.create(**CHAT)
    assert reply.choices[0].message.content
    assert httpx2.post(url, json=CHAT, headers={"api-key": OTHER_KEY}).status_code == 200
    for entry in s.foundry.journal:
        sent = dict(entry.headers)
        assert entry.token_serial is not None  # the proxy's token, not the key
        assert "api-key" not in sent
        assert KEY not in str(entry.headers)
        assert OTHER_KEY not in str(entry.headers)
    # Probes stay open for kubelet, which has no key.
    assert httpx2.get(s.url + "/readyz").status_code == 200
    assert KEY not in proxy.log
    assert OTHER_KEY not in proxy.log


def test_d40_keys_are_compared_in_constant_time() -> None:
    """A unit check that the comparison is hmac.compare_digest over every key."""
    import inspect

    from proxy.admission import Gate

    source = inspect.getsource(Gate.key_ok)
    assert "hmac.compare_digest" in source
    assert "break" not in source
    assert "return True" not in source


@pytest.fixture(scope="module")
def policy_stack() -> Stack:
    s = Stack()
    del s.env["FOUNDRY_PROXY_POLICY"]  # the default policy, not the test stack's open one
    s.env["FOUNDRY_PROXY_ALLOW"] = "POST /openai/v1/files"
    s.env["FOUNDRY_PROXY_DENY"] = "POST /openai/v1/embeddings"
    s.start_proxy()
    yield s  # type: ignore[misc]
    log = s.close()
    assert not s.leaks(log)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/chat/completions", 200),
        ("POST", "/openai/deployments/gpt-test/chat/completions?api-version=2024-10-21", 200),
        ("POST", "/models/chat/completions?api-version=2024-05-01-preview", 200),
        ("GET", "/v1/models", 200),
        ("HEAD", "/v1/models", 200),
        ("GET", "/v1/files/file-1", 200),
        ("POST", "/v1/files", 200),  # widened by FOUNDRY_PROXY_ALLOW
        ("POST", "/v1/embeddings", 403),  # tightened by FOUNDRY_PROXY_DENY
        ("DELETE", "/v1/files/file-1", 405),
        ("PUT", "/v1/chat/completions", 405),
        ("PATCH", "/v1/models", 405),
        ("POST", "/v1/batches", 405),  # batches are readable, not creatable, by default
        ("POST", "/v1/fine_tuning/jobs", 403),
        ("POST", "/v1/assistants", 403),
        ("GET", "/v1/vector_stores", 403),
        ("POST", "/v1/Chat/Completions", 404),  # the string decided on is the one sent
        ("POST", "/v1/chat/completion", 404),  # no such operation: a typo, not a policy matter
        ("POST", "/v1/chat/completions/extra", 403),
        ("DELETE", "/openai/v1/responses/resp_1", 405),
    ],
)
def test_c29_method_and_path_policy(
    policy_stack: Stack, method: str, path: str, status: int
) -> None:
    s = policy_stack
    before = len(s.foundry.journal)
    body = CHAT if method in ("POST", "PUT") else None
    reply = httpx2.request(method, s.url + path, json=body)
    if status == 200:
        # Forwarded: whatever the fake upstream makes of it (it answers no HEAD), it got it.
        assert reply.headers.get("x-foundry-proxy-error") is None, reply.text
        assert len(s.foundry.journal) == before + 1
        return
    assert reply.status_code == status
    assert len(s.foundry.journal) == before, "a refused operation reached the upstream"
    error = reply.json()["error"]
    if status == 405:
        assert error["code"] == "method_not_allowed"
        assert method not in reply.headers["allow"].split(", ")
    elif status == 404:
        assert error["code"] == "not_found"
        assert "did you mean POST /v1/chat/completions?" in error["message"]
    else:
        assert error["code"] == "operation_not_allowed"
        assert "FOUNDRY_PROXY_ALLOW" in error["message"]


def test_a_bad_policy_rule_is_a_startup_error() -> None:
    env = clean_environment() | {
        "FOUNDRY_PROXY_UPSTREAM": "https://myres.openai.azure.com",
        "FOUNDRY_PROXY_CREDENTIAL": "azure-cli",
        "FOUNDRY_PROXY_ALLOW": "/openai/v1/files",
    }
    result = run_proxy([], env)
    assert result.returncode == 2
    assert "FOUNDRY_PROXY_ALLOW: '/openai/v1/files' is not METHOD /path" in result.stderr


def test_unix_socket_listener_is_private_and_skips_the_host_check(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    s = fresh_stack
    path = tmp_path / "proxy.sock"
    s.env["FOUNDRY_PROXY_UDS"] = str(path)
    proxy = s.start_proxy()
    assert f"also listening on unix:{path}" in proxy.log
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    transport = httpx2.HTTPTransport(uds=str(path))
    with httpx2.Client(transport=transport, base_url="http://foundry-proxy") as client:
        reply = client.post("/v1/chat/completions", json=CHAT)
    assert reply.status_code == 200, reply.text
    assert httpx2.get(s.url + "/healthz").status_code == 200  # TCP still serves the probes
    proxy.stop()
    assert not path.exists(), "the socket file was left behind"


def test_non_loopback_bind_needs_keys_or_the_opt_in() -> None:
    import subprocess
    import sys

    base = clean_environment() | {
        "FOUNDRY_PROXY_UPSTREAM": "https://myres.openai.azure.com",
        "FOUNDRY_PROXY_CREDENTIAL": "azure-cli",
        "FOUNDRY_PROXY_HOST": "0.0.0.0",
    }

    def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        code = "from proxy.settings import load_settings; load_settings()"
        return processes.run([sys.executable, "-c", code], env=env, timeout=60)

    refused = run(base)
    assert refused.returncode != 0
    assert "FOUNDRY_PROXY_API_KEYS" in refused.stderr
    assert run(base | {"FOUNDRY_PROXY_API_KEYS": KEY}).returncode == 0
    assert run(base | {"FOUNDRY_PROXY_ALLOW_REMOTE": "true"}).returncode == 0


def test_socket_file_of_a_previous_run_is_replaced(tmp_path: Path, fresh_stack: Stack) -> None:
    s = fresh_stack
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, as after a crash
    s.env["FOUNDRY_PROXY_UDS"] = str(path)
    s.start_proxy()
    assert stat.S_ISSOCK(os.stat(path).st_mode)
