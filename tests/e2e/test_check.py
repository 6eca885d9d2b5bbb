"""`foundry-proxy check` against fakes set up to fail each way it must explain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from proxy.credentials.claims import decode_claims
from proxy.emulator.deployments import Deployments
from tests.e2e.stack import Stack, clean_environment, run_proxy
from tests.fakes.entra import entra_error
from tests.fakes.serve import ServerThread, bind_loopback

pytestmark = pytest.mark.e2e

KEYS = (
    "FOUNDRY_PROXY_UPSTREAM",
    "AZURE_AUTHORITY_HOST",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
)


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    yield s
    s.close()


def check(stack: Stack, tmp_path: Path, *args: str, **overrides: str) -> tuple[int, str]:
    env_file = tmp_path / "check.env"
    values = {k: stack.env[k] for k in KEYS} | overrides
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    result = run_proxy(["check", "--env-file", str(env_file), *args], clean_environment())
    output = result.stdout + result.stderr
    # Whatever happened, neither the secret nor any token may be printed.
    assert not stack.leaks(output), output
    return result.returncode, output


def test_good_setup_passes(stack: Stack, tmp_path: Path) -> None:
    code, out = check(stack, tmp_path)
    assert code == 0, out
    for step in ("settings", "credential", "token", "token contents", "data plane"):
        assert f"[ ok ] {step}:" in out
    assert "[ ok ] credential: using the client secret" in out
    assert "audience https://cognitiveservices.azure.com" in out
    assert "All good" in out


def test_json_output(stack: Stack, tmp_path: Path) -> None:
    code, out = check(stack, tmp_path, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True
    assert [s["name"] for s in report["steps"]] == [
        "settings",
        "credential",
        "token",
        "token contents",
        "data plane",
    ]
    assert report["steps"][1]["details"]["kind"] == "client secret"
    contents = report["steps"][3]["details"]
    assert contents["audience"] == "https://cognitiveservices.azure.com"
    assert len(contents["fingerprint"]) == 10


def test_every_settings_problem_at_once(stack: Stack, tmp_path: Path) -> None:
    code, out = check(
        stack,
        tmp_path,
        AZURE_TENANT_ID="common",
        AZURE_CLIENT_ID="not-a-guid",
        FOUNDRY_PROXY_UPSTREAM="http://myres.openai.azure.com",
    )
    assert code == 1
    assert "[FAIL] settings: 3 setting(s)" in out
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "FOUNDRY_PROXY_UPSTREAM"):
        assert name in out


def test_secret_id_instead_of_value(stack: Stack, tmp_path: Path) -> None:
    code, out = check(stack, tmp_path, AZURE_CLIENT_SECRET="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
    assert code == 1
    assert "looks like a secret ID" in out
    assert "Value" in out
    assert stack.entra.calls == []


@pytest.mark.parametrize(
    ("setup", "cause", "fix"),
    [
        ({"AZURE_CLIENT_SECRET": "wrong~secret"}, "AADSTS7000215", "not its Secret ID"),
        (
            {"AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555"},
            "AADSTS700016",
            "was not found in tenant",
        ),
        (
            {"AZURE_TENANT_ID": "00000000-1111-2222-3333-444444444444"},
            "AADSTS90002",
            "tenant ID or domain",
        ),
        (
            {"FOUNDRY_PROXY_SCOPE": "https://unknown.example.com/.default"},
            "AADSTS500011",
            "does not exist in this tenant",
        ),
    ],
)
def test_entra_refusals_are_explained(
    stack: Stack, tmp_path: Path, setup: dict[str, str], cause: str, fix: str
) -> None:
    code, out = check(stack, tmp_path, **setup)
    assert code == 1
    assert "[FAIL] token:" in out
    assert cause in out
    assert fix in out


@pytest.mark.parametrize(
    ("answer", "cause", "fix"),
    [
        (
            entra_error(
                401, "invalid_client", 7000222, "The provided client secret keys are expired."
            ),
            "AADSTS7000222",
            "has expired",
        ),
        (
            entra_error(400, "invalid_request", 90038, "Tenant is in another cloud."),
            "AADSTS90038",
            "AZURE_AUTHORITY_HOST",
        ),
        (
            entra_error(400, "invalid_scope", 70011, "The provided scope is not valid."),
            "AADSTS70011",
            "FOUNDRY_PROXY_SCOPE",
        ),
        (
            entra_error(
                400,
                "invalid_grant",
                53003,
                "Access has been blocked by Conditional Access policies.",
            ),
            "AADSTS53003",
            "Conditional Access",
        ),
    ],
)
def test_scripted_entra_errors_are_explained(
    stack: Stack, tmp_path: Path, answer: Any, cause: str, fix: str
) -> None:
    stack.entra.script.append(answer)
    code, out = check(stack, tmp_path)
    assert code == 1
    assert cause in out
    assert fix in out


@pytest.mark.parametrize(
    ("authority", "cause", "fix"),
    [
        ("closed-port", "could not reach", "HTTPS_PROXY"),
        ("https://login.nonexistent.invalid", "could not be resolved", "DNS"),
    ],
)
def test_network_failures_reaching_entra(
    stack: Stack, tmp_path: Path, authority: str, cause: str, fix: str
) -> None:
    closed = bind_loopback()  # bound, never listening: connections are refused
    if authority == "closed-port":
        authority = f"http://127.0.0.1:{closed.getsockname()[1]}"
    try:
        code, out = check(stack, tmp_path, AZURE_AUTHORITY_HOST=authority)
    finally:
        closed.close()
    assert code == 1
    assert cause in out
    assert fix in out


def test_tls_interception_points_at_the_ca_bundle(stack: Stack, tmp_path: Path) -> None:
    """A login host with a certificate from an unknown CA, as behind an inspecting proxy."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    server = ServerThread(
        stack.entra.app, ssl_certfile=str(cert_file), ssl_keyfile=str(key_file)
    ).start()
    try:
        code, out = check(stack, tmp_path, AZURE_AUTHORITY_HOST=f"https://127.0.0.1:{server.port}")
    finally:
        server.stop()
    assert code == 1
    assert "TLS" in out
    assert "SSL_CERT_FILE" in out


def test_wrong_audience(stack: Stack, tmp_path: Path) -> None:
    code, out = check(stack, tmp_path, FOUNDRY_PROXY_SCOPE="https://management.azure.com/.default")
    assert code == 1
    assert "[warn] token contents:" in out
    assert "audience is https://management.azure.com" in out
    assert "[FAIL] data plane:" in out
    assert "https://cognitiveservices.azure.com/.default" in out


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            401,
            {
                "error": {
                    "code": "PermissionDenied",
                    "message": "The principal lacks the data action.",
                }
            },
            [
                "-> 401 PermissionDenied",
                "Cognitive Services OpenAI User",
                "Contributor is not enough",
            ],
        ),
        (
            403,
            {"error": {"code": "403", "message": "Public access is disabled."}},
            ["-> 403", "Networking"],
        ),
        (
            404,
            {"error": {"code": "404", "message": "Resource not found"}},
            ["-> 404", "Keys and Endpoint"],
        ),
    ],
)
def test_data_plane_refusals_are_explained(
    stack: Stack, tmp_path: Path, status: int, body: dict[str, Any], expected: list[str]
) -> None:
    """A missing role, a firewall, a wrong endpoint: the token is fine, the call is not."""
    stack.foundry.refuse = (status, body)
    code, out = check(stack, tmp_path)
    assert code == 1
    assert "[ ok ] token:" in out
    assert "[FAIL] data plane: GET" in out
    for text in expected:
        assert text in out


def test_a_200_that_is_not_a_models_list_is_not_success(stack: Stack, tmp_path: Path) -> None:
    """A captive portal or another service answering 200 must not pass the check."""
    stack.foundry.refuse = (200, {"html": "Sign in to the corporate proxy"})
    code, out = check(stack, tmp_path)
    assert code == 1
    assert "not a models list" in out


def test_an_upstream_echoing_the_request_does_not_make_check_print_the_token(
    stack: Stack, tmp_path: Path
) -> None:
    stack.foundry.refuse = lambda request: (
        400,
        {"error": {"code": "echo", "message": f"you sent {request.header('authorization')}"}},
    )
    code, out = check(stack, tmp_path)  # check() itself asserts that no token is printed
    assert code == 1
    assert "you sent Bearer [token]" in out


# --- the mistakes of a first setup (settings names, the example's placeholders) --------------

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.env"


def test_the_example_copied_unchanged_fails_naming_each_placeholder(
    stack: Stack, tmp_path: Path
) -> None:
    """config.example.env with only the secret filled in: well-formed, and hopeless."""
    env_file = tmp_path / "config.env"
    env_file.write_text(
        EXAMPLE.read_text(encoding="utf-8") + f"AZURE_CLIENT_SECRET={stack.secret}\n",
        encoding="utf-8",
    )
    result = run_proxy(["check", "--env-file", str(env_file)], clean_environment())
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert not stack.leaks(out)
    assert "[FAIL] settings: 3 setting(s) still hold config.example.env's placeholders" in out
    lines = out.splitlines()
    for name, what in (
        ("FOUNDRY_PROXY_UPSTREAM", "the resource name myresource"),
        ("AZURE_TENANT_ID", "the nil GUID"),
        ("AZURE_CLIENT_ID", "the nil GUID"),
    ):
        assert any(
            line.startswith(f"         - {name}: still the example's placeholder ({what})")
            for line in lines
        ), out
    assert "all settings present and well-formed" not in out
    assert stack.entra.calls == []


def test_settings_problems_are_listed_one_per_line_as_the_server_lists_them(
    stack: Stack, tmp_path: Path
) -> None:
    bad = {
        "AZURE_TENANT_ID": "common",
        "AZURE_CLIENT_ID": "not-a-guid",
        "FOUNDRY_PROXY_UPSTREAM": "http://myres.openai.azure.com",
    }
    code, out = check(stack, tmp_path, **bad)
    assert code == 1
    assert "; " not in out.split("cause:", 1)[1].split("fix:", 1)[0]
    listed = [line.strip() for line in out.splitlines() if line.startswith("         - ")]
    assert len(listed) == 3
    server = run_proxy(["--env-file", str(tmp_path / "check.env")], clean_environment())
    assert server.returncode == 2
    assert [line.strip() for line in server.stderr.splitlines() if line.startswith("  - ")] == (
        listed
    )


def test_a_misspelt_name_in_the_env_file_fails_the_settings_step(
    stack: Stack, tmp_path: Path
) -> None:
    values = {k: stack.env[k] for k in KEYS if k != "AZURE_CLIENT_SECRET"}
    env_file = tmp_path / "check.env"
    env_file.write_text(
        "".join(f"{k}={v}\n" for k, v in values.items()) + f"AZURE_CLIENT_SECERT={stack.secret}\n"
    )
    result = run_proxy(["check", "--env-file", str(env_file)], clean_environment())
    out = result.stdout + result.stderr
    assert result.returncode == 1
    assert not stack.leaks(out)
    assert f"- AZURE_CLIENT_SECERT: unknown setting in {env_file} (did you mean " in out
    assert "AZURE_CLIENT_SECRET?)" in out
    assert "auto-detection" not in out


def test_a_misspelt_name_in_the_environment_is_a_warning(stack: Stack, tmp_path: Path) -> None:
    env_file = tmp_path / "check.env"
    env_file.write_text("".join(f"{k}={stack.env[k]}\n" for k in KEYS))
    environment = clean_environment() | {"AZURE_TENNANT_ID": "x", "AZURE_SUBSCRIPTION_ID": "x"}
    result = run_proxy(["check", "--env-file", str(env_file)], environment)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert (
        "[warn] settings: AZURE_TENNANT_ID is set in the environment but is not a setting "
        "foundry-proxy reads: did you mean AZURE_TENANT_ID?"
    ) in out
    assert "AZURE_SUBSCRIPTION_ID" not in out
    assert "[ ok ] data plane:" in out


# --- the Claude path (--claude-deployment) ----------------------------------------------------

DENIED = {
    "error": {
        "code": "PermissionDenied",
        "message": "The principal lacks the required data action "
        "Microsoft.CognitiveServices/accounts/AIServices/anthropic/messages/action.",
    }
}


def test_claude_deployment_is_called_once_with_the_ai_azure_com_token(
    stack: Stack, tmp_path: Path
) -> None:
    stack.foundry.deployments = Deployments()  # the emulator's own list, checked as Azure does
    code, out = check(stack, tmp_path, "--json", "--claude-deployment", "claude-sonnet-4-5")
    assert code == 0, out
    report = json.loads(out)
    assert [s["name"] for s in report["steps"]][-2:] == ["data plane", "claude"]
    claude = report["steps"][-1]
    assert claude["status"] == "ok"
    assert claude["details"]["model"] == "emulated-claude-sonnet-4-5"
    [entry] = stack.foundry.entries("/anthropic/")
    assert (entry.method, entry.raw_path, entry.auth) == ("POST", "/anthropic/v1/messages", "ok")
    assert entry.header("anthropic-version") == ["2023-06-01"]
    claims = decode_claims(entry.header("authorization")[0].removeprefix("Bearer "))
    assert claims is not None
    assert claims["aud"] == "https://ai.azure.com"
    # Without the option, no Claude call at all.
    code, out = check(stack, tmp_path)
    assert code == 0
    assert "claude" not in out
    assert len(stack.foundry.entries("/anthropic/")) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_claude_without_a_role_gets_the_claude_roles(
    stack: Stack, tmp_path: Path, status: int
) -> None:
    """The OpenAI routes work, Claude refuses: the advice names the roles that call Claude."""
    stack.foundry.refuse = lambda request: (
        (status, DENIED) if request.path.startswith("/anthropic/") else None
    )
    code, out = check(stack, tmp_path, "--claude-deployment", "my-claude")
    assert code == 1, out
    assert "[ ok ] data plane:" in out
    assert f"[FAIL] claude: POST {stack.foundry_server.url}/anthropic/v1/messages" in out
    assert f"-> {status} PermissionDenied" in out
    for role in ("Cognitive Services User", "Azure AI User", "Foundry User", "Azure AI Developer"):
        assert role in out
    assert "Cognitive Services Contributor is not enough" in out
    assert "OpenAI User" not in out.split("[FAIL] claude:")[1]


def test_an_unknown_claude_deployment_is_a_404_naming_it(stack: Stack, tmp_path: Path) -> None:
    stack.foundry.deployments = Deployments()
    code, out = check(stack, tmp_path, "--claude-deployment", "claude-typo")
    assert code == 1, out
    assert "[ ok ] data plane:" in out
    assert "(model claude-typo) -> 404" in out
    assert "no Claude deployment named 'claude-typo'" in out
    assert "The API deployment for this resource does not exist" in out
    assert "--claude-deployment" in out


def test_a_claude_token_for_the_wrong_audience_is_explained(stack: Stack, tmp_path: Path) -> None:
    code, out = check(
        stack,
        tmp_path,
        "--claude-deployment",
        "claude-sonnet-4-5",
        FOUNDRY_PROXY_PROJECTS_SCOPE="https://cognitiveservices.azure.com/.default",
    )
    assert code == 1, out
    assert "[ ok ] data plane:" in out
    assert "-> 401" in out
    assert "Claude takes tokens for https://ai.azure.com only" in out
    assert "FOUNDRY_PROXY_PROJECTS_SCOPE" in out
