"""The mistakes a new user makes in the settings: a misspelt name, the example's placeholders
left in place. Each is named, with the fix, before anything else happens."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from proxy.credentials.selection import resolve
from proxy.errors import ConfigError, problem_list
from proxy.settings import SettingsError, env_names, load_settings
from proxy.settings_credentials import NO_CREDENTIAL
from proxy.settings_names import AZURE_TOOLING_NAMES, intended
from tests.support.identities import CLIENT_ID, TENANT

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.env"
GOOD = (
    "FOUNDRY_PROXY_UPSTREAM=https://contoso-ai.openai.azure.com\n"
    f"AZURE_TENANT_ID={TENANT}\nAZURE_CLIENT_ID={CLIENT_ID}\n"
)


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith(("AZURE_", "FOUNDRY_PROXY_", "IDENTITY_", "IMDS_", "MSI_")):
            monkeypatch.delenv(key)


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.env"
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.problems


# --- misspelt names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("AZURE_CLIENT_SECERT", "AZURE_CLIENT_SECRET"),
        ("azure_client_secert", "AZURE_CLIENT_SECRET"),
        ("AZURE-CLIENT-SECRET", "AZURE_CLIENT_SECRET"),
        ("AZUER_CLIENT_SECRET", "AZURE_CLIENT_SECRET"),
        ("AZURE_CLIENT_SECRETS_FILE", "AZURE_CLIENT_SECRET_FILE"),
        ("AZURE_CLIENT_CERT_PATH", "AZURE_CLIENT_CERTIFICATE_PATH"),
        ("AZURE_FEDERATED_TOKEN_PATH", "AZURE_FEDERATED_TOKEN_FILE"),
    ],
)
def test_a_misspelt_credential_name_in_the_env_file_is_named(
    tmp_path: Path, written: str, meant: str
) -> None:
    found = refused(env_file(tmp_path, GOOD + f"{written}=abc~DEF123\n"))
    assert (
        found[0]
        == f"{written}: unknown setting in {tmp_path / 'proxy.env'} (did you mean {meant}?)"
    )
    # The typo comes first and alone: no auto-detection story about what was not found.
    assert not any("auto-detection" in p or "no credential configured" in p for p in found)
    assert "abc~DEF123" not in problem_list(found)


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("AZURE_TENNANT_ID", "AZURE_TENANT_ID"),
        ("AZURE_CLIENTID", "AZURE_CLIENT_ID"),
        ("AZURE_AUTHORITY_HOSTS", "AZURE_AUTHORITY_HOST"),
        ("IDENTITY_ENDPIONT", "IDENTITY_ENDPOINT"),
        ("IDENTITY_HEADERS", "IDENTITY_HEADER"),
        ("IMDS_ENDPIONT", "IMDS_ENDPOINT"),
        ("IDENTITY_SERVER_THUMBPRNT", "IDENTITY_SERVER_THUMBPRINT"),
        ("AZURE_CLIENT_CERTIFICATE_PASSWD", "AZURE_CLIENT_CERTIFICATE_PASSWORD"),
        ("AZURE_CLIENT_SEND_CERTIFICATE_CHIAN", "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN"),
        ("FOUNDRY_PROXY_READ_TIMEOUTS", "FOUNDRY_PROXY_READ_TIMEOUT"),
    ],
)
def test_every_name_the_proxy_reads_is_guarded(tmp_path: Path, written: str, meant: str) -> None:
    path = env_file(tmp_path, GOOD + "AZURE_CLIENT_SECRET=abc~DEF123\n" + f"{written}=x\n")
    assert f"{written}: unknown setting in {path} (did you mean {meant}?)" in refused(path)


def test_other_tools_names_and_unrelated_names_pass(tmp_path: Path) -> None:
    others = [
        "AZURE_SUBSCRIPTION_ID",
        "AZURE_USERNAME",
        "AZURE_PASSWORD",
        "AZURE_RESOURCE_GROUP",
        "AZURE_LOCATION",
        "AZURE_ENV_NAME",
        "AZURE_TOKEN_CREDENTIALS",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "AZURE_REGIONAL_AUTHORITY_NAME",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_CORE_OUTPUT",
        "AZURE_IDENTITY_DISABLE_MULTITENANTAUTH",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "WEBSITE_SITE_NAME",
        "MY_APP_LOG_LEVEL",
        "DATABASE_URL",
    ]
    text = GOOD + "AZURE_CLIENT_SECRET=abc~DEF123\n" + "".join(f"{n}=x\n" for n in others)
    settings = load_settings(env_file(tmp_path, text))
    assert settings.warnings() == []


def test_no_name_of_another_tool_counts_as_a_typo_of_ours() -> None:
    read = set(env_names().values())
    assert not AZURE_TOOLING_NAMES & read
    assert {n: intended(n, read) for n in AZURE_TOOLING_NAMES} == dict.fromkeys(AZURE_TOOLING_NAMES)
    # The names closest to ours that are somebody else's.
    for name in ("MSI_ENDPOINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_OPENAI_ENDPOINT"):
        assert intended(name, read) is None


def test_a_misspelt_name_in_the_environment_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = env_file(tmp_path, GOOD + "AZURE_CLIENT_SECRET=abc~DEF123\n")
    monkeypatch.setenv("AZURE_TENNANT_ID", "x")
    monkeypatch.setenv("IDENTITY_ENDPIONT", "x")
    # Unrelated names and other tools' names, as any environment has them.
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "x")
    monkeypatch.setenv("MSI_ENDPOINT", "x")
    monkeypatch.setenv("FOUNDRY_PROXY_SOAK_SECONDS", "1")
    warnings = load_settings(path).warnings()
    assert warnings == [
        "AZURE_TENNANT_ID is set in the environment but is not a setting foundry-proxy reads: "
        "did you mean AZURE_TENANT_ID?",
        "IDENTITY_ENDPIONT is set in the environment but is not a setting foundry-proxy "
        "reads: did you mean IDENTITY_ENDPOINT?",
    ]


def test_a_misspelt_secret_in_the_environment_is_named_when_auto_detection_finds_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """In the environment a typo is only a warning (the environment belongs to everyone), but
    when it leaves the proxy without a credential, the error says so next to the failure,
    ahead of the auto-detection story."""
    monkeypatch.setenv("AZURE_CLIENT_SECERT", "abc~DEF123")
    monkeypatch.setenv("PATH", str(tmp_path))  # no az, no azd
    settings = load_settings(
        upstream="https://contoso-ai.openai.azure.com", tenant_id=TENANT, client_id=CLIENT_ID
    )
    assert settings.credential == "auto"

    async def no_imds() -> bool:
        return False

    with pytest.raises(ConfigError) as info:
        asyncio.run(resolve(settings, no_imds))
    assert info.value.problems[:2] == [
        NO_CREDENTIAL,
        "AZURE_CLIENT_SECERT is set in the environment but is not a setting foundry-proxy "
        "reads: did you mean AZURE_CLIENT_SECRET?",
    ]
    assert "abc~DEF123" not in str(info.value)


# --- the example's placeholders ---------------------------------------------------------------


def test_the_example_copied_unchanged_is_refused_naming_each_placeholder(tmp_path: Path) -> None:
    copied = tmp_path / "config.env"
    shutil.copy(EXAMPLE, copied)
    with copied.open("a", encoding="utf-8") as f:
        f.write("AZURE_CLIENT_SECRET=abc~DEF123\n")  # the one line the user did fill in
    with pytest.raises(SettingsError) as info:
        load_settings(copied)
    assert [p.split(":")[0] for p in info.value.placeholders] == [
        "FOUNDRY_PROXY_UPSTREAM",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
    ]
    assert info.value.problems == info.value.placeholders
    text = str(info.value)
    assert "  - AZURE_TENANT_ID: still the example's placeholder (the nil GUID)" in text
    assert "  - FOUNDRY_PROXY_UPSTREAM: still the example's placeholder (the resource name " in (
        text
    )


def test_placeholders_are_named_along_with_other_problems(tmp_path: Path) -> None:
    copied = tmp_path / "config.env"
    shutil.copy(EXAMPLE, copied)  # AZURE_CLIENT_SECRET left empty
    found = refused(copied)
    assert "AZURE_CLIENT_SECRET: is empty" in found
    assert sum("still the example's placeholder" in p for p in found) == 3
    # The secret's line is there, merely empty: no "no credential configured" on top.
    assert not any("no credential configured" in p for p in found)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("upstream", "https://myresource.services.ai.azure.com"),
        ("upstream", "https://MyResource.openai.azure.us/"),
        ("upstream", "https://myresource.cognitiveservices.azure.com"),
        ("tenant_id", "00000000-0000-0000-0000-000000000000"),
        ("client_id", " 00000000-0000-0000-0000-000000000000 "),
        ("managed_identity_object_id", "00000000-0000-0000-0000-000000000000"),
        (
            "managed_identity_resource_id",
            "/subscriptions/.../userAssignedIdentities/my-identity",
        ),
    ],
)
def test_each_placeholder_is_recognised(setting: str, value: str) -> None:
    values = {
        "upstream": "https://contoso-ai.openai.azure.com",
        "tenant_id": TENANT,
        "credential": "managed-identity",
    } | {setting: value}
    with pytest.raises(SettingsError) as info:
        load_settings(**values)
    assert len(info.value.placeholders) == 1


@pytest.mark.parametrize(
    "upstream",
    [
        "https://myresource2.openai.azure.com",
        "https://myresource.example.com",
        "https://prod-myresource.openai.azure.com",
    ],
)
def test_real_values_that_resemble_a_placeholder_pass(upstream: str) -> None:
    load_settings(
        upstream=upstream,
        tenant_id="00000000-1111-2222-3333-444444444444",
        client_id=CLIENT_ID,
        client_secret="abc~DEF123",
    )


def test_placeholders_in_the_environment_are_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000000")
    with pytest.raises(SettingsError) as info:
        load_settings(
            upstream="https://contoso-ai.openai.azure.com",
            client_id=CLIENT_ID,
            client_secret="abc~DEF123",
        )
    assert [p.split(":")[0] for p in info.value.placeholders] == ["AZURE_TENANT_ID"]


UPSTREAM_PLACEHOLDER = (
    "still the example's placeholder (the resource name myresource): set the endpoint shown on "
    "your resource's Keys and Endpoint page (origin only)"
)
CREDENTIALS = {"tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": "abc~DEF123"}


@pytest.mark.parametrize(
    ("upstream", "items"),
    [
        ("https://contoso-ai.openai.azure.com, https://myresource.openai.azure.com", [2]),
        ("https://myresource.services.ai.azure.com,https://contoso-ai.openai.azure.com", [1]),
        (
            "https://contoso-ai.openai.azure.com,https://myresource.openai.azure.com,"
            "https://myresource.cognitiveservices.azure.com",
            [2, 3],
        ),
    ],
)
def test_each_item_of_an_upstream_list_is_checked_for_the_placeholder(
    upstream: str, items: list[int]
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(upstream=upstream, **CREDENTIALS)
    assert info.value.placeholders == [
        f"FOUNDRY_PROXY_UPSTREAM: item {n}: {UPSTREAM_PLACEHOLDER}" for n in items
    ]
    assert info.value.problems == info.value.placeholders


def test_an_upstream_list_of_real_origins_passes() -> None:
    settings = load_settings(
        upstream="https://myresource2.openai.azure.com,https://prod-myresource.openai.azure.com",
        **CREDENTIALS,
    )
    assert settings.pool is not None
    assert len(settings.pool.backends) == 2


BACKENDS = """
[[backend]]
name = "west"
origin = "https://contoso-west.openai.azure.com"

[[backend]]
name = "east"
origin = "https://myresource.services.ai.azure.com"

[[backend]]
origin = "https://myresource.openai.azure.com"
"""


def test_each_backend_of_a_backends_file_is_checked_for_the_placeholder(tmp_path: Path) -> None:
    path = tmp_path / "backends.toml"
    path.write_text(BACKENDS, encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings(backends_file=path, **CREDENTIALS)
    where = "FOUNDRY_PROXY_BACKENDS_FILE (backends.toml)"
    assert info.value.placeholders == [
        f"{where}: backend 2 (east): origin {UPSTREAM_PLACEHOLDER}",
        f"{where}: backend 3: origin {UPSTREAM_PLACEHOLDER}",
    ]
    # The third backend has no name, which the file's own check reports beside it.
    assert [p for p in info.value.problems if p not in info.value.placeholders] == [
        f"{where}: backend 3: name is required: 1-32 lower-case letters, digits, '-' or '_' "
        "(it names the backend in logs and metrics)"
    ]


def test_a_backends_file_placeholder_is_found_from_an_env_file(tmp_path: Path) -> None:
    backends = tmp_path / "pool.toml"
    backends.write_text(
        '[[backend]]\nname = "only"\norigin = "https://MyResource.openai.azure.us/"\n',
        encoding="utf-8",
    )
    path = env_file(
        tmp_path,
        f"FOUNDRY_PROXY_BACKENDS_FILE={backends}\nAZURE_TENANT_ID={TENANT}\n"
        f"AZURE_CLIENT_ID={CLIENT_ID}\nAZURE_CLIENT_SECRET=abc~DEF123\n",
    )
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert info.value.placeholders == [
        f"FOUNDRY_PROXY_BACKENDS_FILE (pool.toml): backend 1 (only): origin {UPSTREAM_PLACEHOLDER}"
    ]


def test_an_unreadable_backends_file_is_reported_once_not_as_a_placeholder(
    tmp_path: Path,
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[[backend]\norigin = "https://myresource.openai.azure.com"\n')
    with pytest.raises(SettingsError) as info:
        load_settings(backends_file=path, **CREDENTIALS)
    assert info.value.placeholders == []
    [problem] = info.value.problems
    assert problem.startswith("FOUNDRY_PROXY_BACKENDS_FILE (broken.toml): is not valid TOML")


# --- one format for a list of problems --------------------------------------------------------


def test_problems_are_listed_one_per_line() -> None:
    err = ConfigError(["A: first", "B: second; with a semicolon"])
    assert str(err) == "invalid configuration:\n  - A: first\n  - B: second; with a semicolon"
    assert problem_list(err.problems, "    ") == "    - A: first\n    - B: second; with a semicolon"


def test_a_misspelt_name_in_the_environment_is_listed_when_the_settings_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AZURE_TENNANT_ID", TENANT)
    with pytest.raises(ConfigError) as info:
        load_settings(
            upstream="https://contoso-ai.openai.azure.com",
            client_id=CLIENT_ID,
            client_secret="abc~DEF123",
        )
    assert info.value.problems == [
        "AZURE_TENANT_ID: is required for FOUNDRY_PROXY_CREDENTIAL=secret",
        "AZURE_TENNANT_ID is set in the environment but is not a setting foundry-proxy reads: "
        "did you mean AZURE_TENANT_ID?",
    ]
