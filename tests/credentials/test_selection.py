"""FOUNDRY_PROXY_CREDENTIAL=auto: the order, and the reasons logged for each kind passed over."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.credentials.selection import Choice, resolve
from proxy.errors import ConfigError
from proxy.settings import load_settings
from tests.fakes.cli import install_fake_cli
from tests.support.identities import CLIENT_ID, TENANT

UPSTREAM = "https://myres.openai.azure.com"


@pytest.fixture(autouse=True)
def _only_these_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("AZURE_", "FOUNDRY_PROXY_", "IDENTITY_", "MSI_")):
            monkeypatch.delenv(key)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def choose(imds: bool = False, **values: object) -> tuple[Choice, list[str]]:
    probes: list[str] = []

    async def probe() -> bool:
        probes.append("imds")
        return imds

    settings = load_settings(upstream=UPSTREAM, **values)
    return asyncio.run(resolve(settings, probe)), probes


def test_an_app_registration_credential_wins_without_probing(tmp_path: Path) -> None:
    choice, probes = choose(True, tenant_id=TENANT, client_id=CLIENT_ID, client_secret="s3cr3t")
    assert (choice.settings.credential, choice.settings.credential_kind) == (
        "secret",
        "client secret",
    )
    assert probes == []
    assert choice.passed_over == ()
    token_file = tmp_path / "token"
    token_file.write_text("eyJ.a.b")
    choice, _ = choose(tenant_id=TENANT, client_id=CLIENT_ID, federated_token_file=token_file)
    assert choice.settings.credential == "workload-identity"


def test_app_service_identity_is_chosen_before_imds_is_probed() -> None:
    choice, probes = choose(
        True, identity_endpoint="http://127.0.0.1:1/msi/token", identity_header="h"
    )
    assert choice.settings.credential_kind == "managed identity (App Service)"
    assert probes == []
    assert "IDENTITY_ENDPOINT" not in " ".join(choice.passed_over)


def test_imds_when_it_answers_then_the_clis_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    choice, probes = choose(True)
    assert choice.settings.credential_kind == "managed identity (IMDS)"
    assert probes == ["imds"]
    assert (
        choice.passed_over[-1]
        == "managed identity (App Service): IDENTITY_ENDPOINT and IDENTITY_HEADER are not set"
    )

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    install_fake_cli(bin_dir, "azd")
    choice, _ = choose(False)
    assert choice.settings.credential_kind == "Azure Developer CLI"
    assert choice.passed_over[-1] == "Azure CLI: az is not on PATH"
    install_fake_cli(bin_dir, "az")
    assert choose(False)[0].settings.credential_kind == "Azure CLI"


def test_nothing_found_names_every_kind_and_why() -> None:
    with pytest.raises(ConfigError) as info:
        choose(False)
    text = "\n".join(info.value.problems)
    assert info.value.problems[0].startswith("no credential configured")
    for reason in (
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "IDENTITY_ENDPOINT and IDENTITY_HEADER are not set",
        "no Azure IMDS answered at http://169.254.169.254",
        "az is not on PATH",
        "azd is not on PATH",
    ):
        assert reason in text


def test_an_explicit_kind_is_never_second_guessed() -> None:
    choice, probes = choose(True, credential="azure-cli")
    assert choice.settings.credential == "azure-cli"
    assert probes == []


@pytest.mark.parametrize(
    ("marker", "platform"),
    [
        ({"arc_imds_endpoint": "http://localhost:40342"}, "Azure Arc"),
        ({"identity_header": "h", "identity_server_thumbprint": "AB12"}, "Service Fabric"),
    ],
)
def test_arc_and_service_fabric_are_not_mistaken_for_app_service(
    marker: dict[str, str], platform: str
) -> None:
    values = {"identity_endpoint": "http://localhost:40342/metadata/identity/oauth2/token"}
    choice, probes = choose(True, **values, **marker, credential="azure-identity")
    assert choice.settings.credential == "azure-identity"  # the way to use them: no error
    with pytest.raises(ConfigError) as info:
        choose(False, **values, **marker)
    assert f"this is {platform}; set FOUNDRY_PROXY_CREDENTIAL=azure-identity" in "\n".join(
        info.value.problems
    )
    assert probes == []
    with pytest.raises(ConfigError) as explicit:
        load_settings(upstream=UPSTREAM, credential="managed-identity", **values, **marker)
    assert f"this is {platform}" in explicit.value.problems[0]


def test_auto_detected_managed_identity_checks_its_selectors() -> None:
    with pytest.raises(ConfigError) as info:
        choose(True, client_id=CLIENT_ID, managed_identity_object_id=TENANT)
    assert info.value.problems == [
        "AZURE_CLIENT_ID and FOUNDRY_PROXY_MANAGED_IDENTITY_OBJECT_ID: name a user-assigned "
        "identity in one way only"
    ]
