"""Startup with a first setup's mistakes: the example's placeholders, a misspelt name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, clean_environment, run_proxy

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.env"


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    yield s
    s.close()


def test_the_example_copied_unchanged_does_not_start(tmp_path: Path) -> None:
    """A proxy that can never work must not start and look healthy."""
    env_file = tmp_path / "config.env"
    env_file.write_text(
        EXAMPLE.read_text(encoding="utf-8") + "AZURE_CLIENT_SECRET=abc~DEF123\n", encoding="utf-8"
    )
    result = run_proxy(["--env-file", str(env_file), "--port", "0"], clean_environment())
    assert result.returncode == 2, result.stderr
    listed = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert [line.split(":")[0] for line in listed] == [
        "  - FOUNDRY_PROXY_UPSTREAM",
        "  - AZURE_TENANT_ID",
        "  - AZURE_CLIENT_ID",
    ]
    assert all("still the example's placeholder" in line for line in listed)
    assert "listening on" not in result.stdout + result.stderr


def test_a_placeholder_in_a_pool_does_not_start(tmp_path: Path) -> None:
    """A placeholder in the second origin of a list, or in a backends file, is refused too."""
    backends = tmp_path / "backends.toml"
    backends.write_text(
        '[[backend]]\nname = "west"\norigin = "https://contoso-west.openai.azure.com"\n'
        '[[backend]]\nname = "east"\norigin = "https://myresource.openai.azure.com"\n',
        encoding="utf-8",
    )
    credentials = (
        "AZURE_TENANT_ID=72f988bf-86f1-41af-91ab-2d7cd011db47\n"
        "AZURE_CLIENT_ID=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n"
        "AZURE_CLIENT_SECRET=abc~DEF123\n"
    )
    expected = {
        "FOUNDRY_PROXY_UPSTREAM=https://contoso-ai.openai.azure.com,"
        "https://myresource.openai.azure.com\n": "  - FOUNDRY_PROXY_UPSTREAM: item 2: ",
        f"FOUNDRY_PROXY_BACKENDS_FILE={backends}\n": (
            "  - FOUNDRY_PROXY_BACKENDS_FILE (backends.toml): backend 2 (east): origin "
        ),
    }
    env_file = tmp_path / "config.env"
    for line, named in expected.items():
        env_file.write_text(line + credentials, encoding="utf-8")
        result = run_proxy(["--env-file", str(env_file), "--port", "0"], clean_environment())
        assert result.returncode == 2, result.stderr
        listed = [x for x in result.stderr.splitlines() if x.startswith("  - ")]
        assert listed == [
            named + "still the example's placeholder (the resource name "
            "myresource): set the endpoint shown on your resource's Keys and "
            "Endpoint page (origin only)"
        ]
        assert "listening on" not in result.stdout + result.stderr


def test_a_misspelt_secret_name_in_the_env_file_is_named(tmp_path: Path) -> None:
    env_file = tmp_path / "config.env"
    env_file.write_text(
        "FOUNDRY_PROXY_UPSTREAM=https://contoso-ai.openai.azure.com\n"
        "AZURE_TENANT_ID=72f988bf-86f1-41af-91ab-2d7cd011db47\n"
        "AZURE_CLIENT_ID=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n"
        "AZURE_CLIENT_SECERT=CANARY-typo-secret-0123456789\n",
        encoding="utf-8",
    )
    result = run_proxy(["--env-file", str(env_file), "--port", "0"], clean_environment())
    assert result.returncode == 2
    assert (
        f"  - AZURE_CLIENT_SECERT: unknown setting in {env_file} "
        "(did you mean AZURE_CLIENT_SECRET?)"
    ) in result.stderr
    # Said plainly, without the auto-detection story the typo used to cause.
    assert "auto-detection" not in result.stderr
    assert "none of AZURE_CLIENT_SECRET" not in result.stderr
    assert "CANARY-typo-secret" not in result.stdout + result.stderr


def test_a_misspelt_name_in_the_environment_is_logged_and_the_proxy_starts(
    stack: Stack,
) -> None:
    stack.env |= {"IDENTITY_ENDPIONT": "http://127.0.0.1:1", "AZURE_SUBSCRIPTION_ID": "x"}
    proxy = stack.start_proxy()
    log = proxy.log
    assert (
        "IDENTITY_ENDPIONT is set in the environment but is not a setting foundry-proxy "
        "reads: did you mean IDENTITY_ENDPOINT?"
    ) in log
    assert "AZURE_SUBSCRIPTION_ID" not in log
