from __future__ import annotations

from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.settings import Settings, load_settings

GOOD = {
    "upstream": "https://myres.openai.azure.com",
    "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "client_id": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    "client_secret": "abc~DEF123",
}
SECRET = "CANARY-SECRET-settings-0123456789"


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("AZURE_", "FOUNDRY_PROXY_")):
            monkeypatch.delenv(key)


def problems(**values: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(**values)
    return info.value.problems


def test_defaults_and_normalisation() -> None:
    s = load_settings(
        **GOOD
        | {
            "upstream": "https://MyRes.openai.azure.com/",
            "authority_host": "login.microsoftonline.us/",
        }
    )
    assert s.upstream == "https://myres.openai.azure.com"
    assert s.authority_host == "https://login.microsoftonline.us"
    assert s.scope == "https://cognitiveservices.azure.com/.default"
    assert s.projects_scope == "https://ai.azure.com/.default"
    assert (s.host, s.port) == ("127.0.0.1", 8787)


def test_every_problem_is_reported_together_without_values() -> None:
    found = problems(
        upstream="http://myres.openai.azure.com",
        tenant_id="common",
        client_id="x",
        client_secret=SECRET,
        port=SECRET,
    )
    joined = "\n".join(found)
    assert len(found) == 4
    assert "FOUNDRY_PROXY_UPSTREAM: must use https://" in joined
    assert "AZURE_TENANT_ID:" in joined
    assert "AZURE_CLIENT_ID:" in joined
    assert "FOUNDRY_PROXY_PORT:" in joined
    assert SECRET not in joined


@pytest.mark.parametrize(
    ("upstream", "fragment"),
    [
        ("https://myres.openai.azure.com/openai/v1", "origin only"),
        ("https://user:pw@myres.openai.azure.com", "user name or password"),
        ("https://myres.openai.azure.com?x=1", "query string"),
        ("ftp://myres.openai.azure.com", "absolute https:// URL"),
        ("myres.openai.azure.com", "absolute https:// URL"),
        ("https://myres.openai.azure.com:99999", "invalid port"),
    ],
)
def test_upstream_must_be_a_plain_origin(upstream: str, fragment: str) -> None:
    assert fragment in problems(**GOOD | {"upstream": upstream})[0]


@pytest.mark.parametrize(
    "upstream", ["http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000"]
)
def test_plain_http_is_allowed_for_loopback_only(upstream: str) -> None:
    assert load_settings(**GOOD | {"upstream": upstream}).upstream == upstream


def test_authority_http_needs_loopback() -> None:
    assert "https" in problems(**GOOD | {"authority_host": "http://login.example.com"})[0]


def test_scope_must_be_one_default_scope() -> None:
    assert "/.default" in problems(**GOOD | {"scope": "https://cognitiveservices.azure.com"})[0]


def test_kubernetes_service_link_port_gets_a_specific_message() -> None:
    assert "service link" in problems(**GOOD | {"port": "tcp://10.0.0.7:8787"})[0]


def test_remote_bind_needs_opt_in() -> None:
    assert "FOUNDRY_PROXY_ALLOW_REMOTE" in problems(**GOOD | {"host": "0.0.0.0"})[0]
    assert load_settings(**GOOD | {"host": "0.0.0.0", "allow_remote": True}).host == "0.0.0.0"


def test_secret_never_in_repr_or_dump() -> None:
    s = load_settings(**GOOD | {"client_secret": SECRET})
    for text in (repr(s), str(s), str(s.model_dump()), s.model_dump_json()):
        assert SECRET not in text


def test_guid_secret_warns_about_secret_id() -> None:
    s = load_settings(**GOOD | {"client_secret": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"})
    assert any("secret's ID" in w for w in s.warnings())


def test_environment_wins_over_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "p.env"
    env_file.write_text(
        "FOUNDRY_PROXY_UPSTREAM=https://fromfile.openai.azure.com\n"
        f"AZURE_TENANT_ID={GOOD['tenant_id']}\nAZURE_CLIENT_ID={GOOD['client_id']}\n"
        "AZURE_CLIENT_SECRET=from-file\n# a comment\nFOUNDRY_PROXY_READ_TIMEOUT=30\n"
    )
    monkeypatch.setenv("FOUNDRY_PROXY_UPSTREAM", "https://fromenv.openai.azure.com")
    s = load_settings(env_file)
    assert s.upstream == "https://fromenv.openai.azure.com"
    assert s.read_timeout == 30
    assert s.client_secret.get_secret_value() == "from-file"


def test_settings_are_frozen() -> None:
    s = Settings(**GOOD)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="frozen"):
        s.port = 1  # type: ignore[misc]


def test_every_setting_is_documented_in_the_example_file() -> None:
    from proxy.settings import env_names

    example = (Path(__file__).resolve().parents[2] / "config.example.env").read_text()
    assert [n for n in env_names().values() if n not in example] == []


def test_exactly_one_way_to_prove_the_app(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    without = {k: v for k, v in GOOD.items() if k != "client_secret"}
    assert "AZURE_CLIENT_SECRET: is required" in problems(**without)[0]
    both = problems(**GOOD | {"client_secret_file": str(secret_file)})
    assert "AZURE_CLIENT_SECRET and AZURE_CLIENT_SECRET_FILE" in both[0]
    missing = problems(**without | {"federated_token_file": str(tmp_path / "nope")})
    assert "AZURE_FEDERATED_TOKEN_FILE:" in missing[0]
    assert "does not exist" in missing[0]
    s = load_settings(**without | {"client_secret_file": str(secret_file)})
    assert s.credential_kind == "client secret file"
    assert s.known_secrets() == ["from-a-file"]
    token_file = tmp_path / "token"
    token_file.write_text("eyJ.x.y")
    assert load_settings(**without | {"federated_token_file": str(token_file)}).credential_kind == (
        "workload identity"
    )
