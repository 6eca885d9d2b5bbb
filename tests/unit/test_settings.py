from __future__ import annotations

from pathlib import Path

import pytest

from proxy.settings import Settings, load_settings
from tests.support.settings_env import APP_CREDENTIAL, clear_outside_settings
from tests.support.settings_env import settings_problems as problems

GOOD = {"upstream": "https://myres.openai.azure.com", **APP_CREDENTIAL}
SECRET = "CANARY-SECRET-settings-0123456789"


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_outside_settings(monkeypatch)


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
    s = load_settings(**GOOD)
    with pytest.raises(ValueError, match="frozen"):
        s.port = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        s.scope = "https://elsewhere.example/.default"  # type: ignore[misc]
    # Only load_settings builds them: the derived values are not optional.
    with pytest.raises(ValueError, match="inbound_key_values"):
        Settings(**GOOD)  # type: ignore[arg-type]


def test_exactly_one_way_to_prove_the_app(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    without = {k: v for k, v in GOOD.items() if k != "client_secret"}
    assert problems(**without | {"credential": "secret"}) == [
        "FOUNDRY_PROXY_CREDENTIAL=secret needs AZURE_CLIENT_SECRET or AZURE_CLIENT_SECRET_FILE: "
        "is required"
    ]
    # auto with no App Registration credential is valid: managed identity or a CLI login may
    # be found at startup (tests/credentials/test_selection.py).
    assert load_settings(**without).credential == "auto"
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


def test_explicit_kind_lists_everything_it_is_missing() -> None:
    found = problems(upstream=GOOD["upstream"], credential="certificate")
    assert found == [
        "FOUNDRY_PROXY_CREDENTIAL=certificate needs AZURE_CLIENT_CERTIFICATE_PATH: is required",
        "AZURE_TENANT_ID: is required for FOUNDRY_PROXY_CREDENTIAL=certificate",
        "AZURE_CLIENT_ID: is required for FOUNDRY_PROXY_CREDENTIAL=certificate",
    ]
    assert (
        "AZURE_TENANT_ID: is required"
        in problems(upstream=GOOD["upstream"], client_id=GOOD["client_id"], client_secret=SECRET)[0]
    )


def test_cli_and_managed_identity_need_no_app_registration() -> None:
    for kind in ("azure-cli", "azd", "managed-identity", "azure-identity"):
        s = load_settings(upstream=GOOD["upstream"], credential=kind)
        assert s.tenant_id is None
        assert s.client_id is None
    assert load_settings(upstream=GOOD["upstream"], credential="azd").credential_kind == (
        "Azure Developer CLI"
    )


def test_managed_identity_settings_are_checked() -> None:
    assert (
        "IDENTITY_ENDPOINT and IDENTITY_HEADER: set both"
        in problems(
            upstream=GOOD["upstream"],
            credential="managed-identity",
            identity_endpoint="http://127.0.0.1:41234/msi/token",
        )[0]
    )
    # Only a managed identity needs the pair: an Azure CLI user on such a host is fine.
    assert load_settings(
        upstream=GOOD["upstream"],
        credential="azure-cli",
        identity_endpoint="http://127.0.0.1:41234/msi/token",
    )
    assert "must be a proxy URL" in problems(**GOOD | {"token_proxy": "socks5://proxy:1080"})[0]
    two = problems(
        upstream=GOOD["upstream"],
        credential="managed-identity",
        client_id=GOOD["client_id"],
        managed_identity_object_id=GOOD["tenant_id"],
    )
    assert two == [
        "AZURE_CLIENT_ID and FOUNDRY_PROXY_MANAGED_IDENTITY_OBJECT_ID: name a user-assigned "
        "identity in one way only"
    ]
    assert (
        "must be an Azure resource ID"
        in problems(upstream=GOOD["upstream"], managed_identity_resource_id="my-identity")[0]
    )
    s = load_settings(
        upstream=GOOD["upstream"],
        credential="managed-identity",
        identity_endpoint="http://127.0.0.1:41234/msi/token",
        identity_header=SECRET,
    )
    assert s.credential_kind == "managed identity (App Service)"
    assert SECRET in s.known_secrets()
    assert SECRET not in repr(s)


def test_cloud_switches_login_host_and_scopes_together() -> None:
    gov = load_settings(**GOOD | {"upstream": "https://res.openai.azure.us", "cloud": "usgov"})
    assert gov.authority_host == "https://login.microsoftonline.us"
    assert gov.scope == "https://cognitiveservices.azure.us/.default"
    assert gov.projects_scope == "https://ai.azure.us/.default"
    assert gov.warnings() == []
    china = load_settings(
        **GOOD
        | {
            "upstream": "https://res.openai.azure.cn",
            "cloud": "china",
            "scope": "https://ai.azure.com/.default",
        }
    )
    assert china.authority_host == "https://login.chinacloudapi.cn"
    assert china.scope == "https://ai.azure.com/.default"  # an explicit setting wins


def test_upstream_of_another_cloud_warns() -> None:
    s = load_settings(**GOOD | {"upstream": "https://res.openai.azure.us"})
    assert s.warnings() == [
        "FOUNDRY_PROXY_UPSTREAM is a usgov cloud host but FOUNDRY_PROXY_CLOUD is public: set "
        "FOUNDRY_PROXY_CLOUD=usgov so the login host and scope match"
    ]
    custom = load_settings(**GOOD | {"upstream": "https://ai.contoso.example"})
    assert "private endpoint or custom domain" in custom.warnings()[0]
    assert load_settings(**GOOD | {"upstream": "http://127.0.0.1:9"}).warnings() == []


def test_unused_app_settings_under_an_explicit_kind_warn() -> None:
    s = load_settings(**GOOD | {"credential": "azure-cli"})
    assert s.warnings() == [
        "AZURE_CLIENT_SECRET set but not used: FOUNDRY_PROXY_CREDENTIAL is azure-cli"
    ]


def test_token_egress_settings(tmp_path: Path) -> None:
    proxy = f"http://user:{SECRET}@proxy.corp.example:3128"
    s = load_settings(**GOOD | {"token_proxy": proxy})
    assert SECRET in s.known_secrets()
    assert SECRET not in repr(s)
    assert SECRET not in str(s.model_dump())
    assert (
        "FOUNDRY_PROXY_TOKEN_PROXY: must be a proxy URL"
        in problems(**GOOD | {"token_proxy": "proxy.corp.example"})[0]
    )
    assert (
        "FOUNDRY_PROXY_TOKEN_CA_BUNDLE:"
        in problems(**GOOD | {"token_ca_bundle": str(tmp_path / "missing.pem")})[0]
    )


def test_d38_world_readable_secret_files_warn(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o644)
    values = {k: v for k, v in GOOD.items() if k != "client_secret"}
    s = load_settings(**values | {"client_secret_file": str(secret_file)})
    assert any("can be read by every user" in w for w in s.warnings())
    assert all(SECRET not in w for w in s.warnings())
    secret_file.chmod(0o600)
    # Checked once, when the settings are loaded: a restart picks the new mode up.
    assert any("can be read by every user" in w for w in s.warnings())
    s = load_settings(**values | {"client_secret_file": str(secret_file)})
    assert not any("can be read by every user" in w for w in s.warnings())


def test_derived_values_are_computed_once(tmp_path: Path) -> None:
    """The keys file is read, the rules parsed and the warnings computed when the settings are
    loaded, never again: a request must not touch the disk."""
    keys_file = tmp_path / "keys"
    keys_file.write_text("# one key per line\nkey-0123456789abcdef\n")
    keys_file.chmod(0o600)
    s = load_settings(**GOOD | {"api_keys_file": str(keys_file), "allow": "POST /openai/v1/files"})
    keys_file.unlink()
    assert s.inbound_keys() == ["key-0123456789abcdef"]
    assert s.inbound_keys() == ["key-0123456789abcdef"]
    allow, deny = s.rules()
    assert allow[-1].pattern == "/openai/v1/files"
    assert deny == []
    assert s.warnings() == []
    assert "key-0123456789abcdef" not in repr(s) + str(s.model_dump())


def test_settings_survive_the_trip_to_a_worker_process() -> None:
    import pickle

    s = load_settings(**GOOD | {"api_keys": "key-0123456789abcdef"})
    again = pickle.loads(pickle.dumps(s))  # noqa: S301 - our own object, just pickled
    assert again == s
    assert again.inbound_keys() == ["key-0123456789abcdef"]


def test_the_cloud_fills_in_what_was_not_set() -> None:
    s = load_settings(**GOOD | {"cloud": "china", "upstream": "https://x.openai.azure.cn"})
    assert (s.authority_host, s.scope, s.projects_scope) == (
        "https://login.chinacloudapi.cn",
        "https://cognitiveservices.azure.cn/.default",
        "https://ai.azure.cn/.default",
    )


def test_auto_names_the_app_registration_kind_once_loaded(tmp_path: Path) -> None:
    without = {k: v for k, v in GOOD.items() if k != "client_secret"}
    assert load_settings(**GOOD).credential == "secret"
    token_file = tmp_path / "token"
    token_file.write_text("eyJ.x.y")
    loaded = load_settings(**without | {"federated_token_file": str(token_file)})
    assert loaded.credential == "workload-identity"
    # Only the platform kinds are left to detection, which builds validated settings too.
    plain = load_settings(**without)
    assert plain.credential == "auto"
    assert plain.with_detected_credential("azure-cli").credential_kind == "Azure CLI"
    with pytest.raises(ValueError, match="credential"):
        plain.with_detected_credential("nonsense")  # type: ignore[arg-type]


def test_nothing_writes_into_or_copies_past_the_validation_of_the_settings() -> None:
    package = Path(__file__).resolve().parents[2] / "proxy"
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "object.__setattr__" not in text, path
        assert "model_copy(" not in text, path
        assert "model_construct(" not in text, path
