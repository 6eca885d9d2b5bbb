"""Rules the server and `check` share: one copy each, so that they cannot drift."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from proxy.clouds import DATA_PLANE_AUDIENCES, cloud_of_host
from proxy.credentials.codes import TokenErrorCode, parse_code
from proxy.settings import load_settings
from proxy.upstream_refusals import Refusal, classify_401
from tests.support.identities import CLIENT_ID, TENANT

PACKAGE = Path(__file__).resolve().parents[2] / "proxy"


@pytest.mark.parametrize(
    ("body", "challenge", "expected"),
    [
        ({"statusCode": 401, "message": "Access token is missing or invalid."}, False, "token"),
        ({"error": {"code": "PermissionDenied", "message": "no data action"}}, False, "role"),
        # A role is missing whatever else the answer says: a new token would not help.
        ({"error": {"code": "PermissionDenied"}}, True, "role"),
        ({"type": "error", "error": {"type": "authentication_error"}}, False, "token"),
        ({"error": {"code": "401", "message": "Unauthorized"}}, True, "token"),
        ({"error": {"code": "401", "message": "Unauthorized"}}, False, "unexplained"),
        (None, True, "token"),
        (None, False, "unexplained"),
        (["not", "an", "object"], False, "unexplained"),
    ],
)
def test_what_a_401_means(body: object, challenge: bool, expected: str) -> None:
    meaning = {
        "token": Refusal.TOKEN_REJECTED,
        "role": Refusal.NO_ROLE,
        "unexplained": Refusal.UNEXPLAINED,
    }
    assert classify_401(body, challenge=challenge) is meaning[expected]


def test_token_error_codes_parse_back() -> None:
    assert parse_code("token_timeout") == (TokenErrorCode.TOKEN_TIMEOUT, None)
    assert parse_code("http_302") == (TokenErrorCode.TOKEN_HTTP, 302)
    assert parse_code(TokenErrorCode.IMDS_HTTP.with_status(500)) == (TokenErrorCode.IMDS_HTTP, 500)
    assert parse_code("identity_endpoint_http_404") == (
        TokenErrorCode.IDENTITY_ENDPOINT_HTTP,
        404,
    )
    # The token service's own codes are not ours.
    assert parse_code("AADSTS7000215") == (None, None)
    assert parse_code("invalid_client") == (None, None)
    assert parse_code("http_") == (None, None)


def test_credential_errors_use_the_enum_not_free_strings() -> None:
    """Every ``code=`` given to an error in the credentials package is a TokenErrorCode (or
    comes from the token service's answer), never a string literal that could drift from the
    table `check` picks its advice from."""
    literals = []
    for path in (PACKAGE / "credentials").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.keyword)
                and node.arg == "code"
                and isinstance(node.value, ast.Constant | ast.JoinedStr)
            ):
                literals.append(f"{path.name}:{node.value.lineno}")
    assert literals == []


def test_check_keys_its_advice_by_the_enum() -> None:
    from proxy.check_token import _TOKEN_FIXES

    assert all(isinstance(code, TokenErrorCode) for code in _TOKEN_FIXES)
    source = "".join(p.read_text(encoding="utf-8") for p in PACKAGE.glob("check*.py"))
    # No advice picked by matching a code's text or the credential's display name.
    assert not re.search(r'err\.code\.startswith|kind\.startswith|"(token|imds)_[a-z_]+":', source)


@pytest.mark.parametrize(
    ("host", "cloud"),
    [
        ("contoso.openai.azure.com", "public"),
        ("contoso.services.ai.azure.com", "public"),
        ("contoso.cognitiveservices.azure.com", "public"),
        ("my-endpoint.eastus.inference.ml.azure.com", "public"),
        ("contoso.openai.azure.us", "usgov"),
        ("contoso.services.ai.azure.us", "usgov"),
        ("contoso.services.ai.azure.cn", "china"),
        ("contoso.cognitiveservices.azure.cn", "china"),
        ("proxy.internal.example", None),
    ],
)
def test_one_list_of_upstream_hosts(host: str, cloud: str | None) -> None:
    assert cloud_of_host(host) == cloud


@pytest.mark.parametrize(
    "upstream",
    [
        "https://contoso.services.ai.azure.us",
        "https://contoso.services.ai.azure.cn",
        "https://my-endpoint.eastus.inference.ml.azure.com",
    ],
)
def test_hosts_the_server_accepts_raise_no_warning(
    upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check` shows the settings' warnings: a usual host of the configured cloud has none."""
    for key in ("FOUNDRY_PROXY_CLOUD", "AZURE_AUTHORITY_HOST"):
        monkeypatch.delenv(key, raising=False)
    cloud = cloud_of_host(upstream.removeprefix("https://"))
    settings = load_settings(
        upstream=upstream,
        cloud=cloud,
        tenant_id=TENANT,
        client_id=CLIENT_ID,
        client_secret="abc~DEF123",
    )
    assert settings.warnings() == []


def test_data_plane_audiences_cover_every_cloud() -> None:
    assert DATA_PLANE_AUDIENCES[:2] == (
        "https://cognitiveservices.azure.com",
        "https://ai.azure.com",
    )
    assert "https://cognitiveservices.azure.us" in DATA_PLANE_AUDIENCES
    assert "https://ai.azure.cn" in DATA_PLANE_AUDIENCES
