"""The serving path imports only what the configured credential and features need.

A fresh interpreter goes the way `foundry-proxy` goes before it serves (command line,
settings, credential detection, the app), then reports sys.modules: the demo, the emulator,
`check`, cryptography and azure-identity stay out of an idle proxy's memory (docs/settings.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.support.processes import run

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys
from proxy.cli import _build, _detect, _parse
from proxy.settings import load_settings

assert _parse([]).command is None
settings = _detect(load_settings(None))
app = _build(settings)
import proxy.server
print(json.dumps(sorted(sys.modules)))
"""
# Only for other commands or other credentials.
NEVER_SERVING = (
    "proxy.demo",
    "proxy.emulator",
    "proxy.check",
    "proxy.check_claude",
    "proxy.check_report",
    "proxy.check_token",
    "proxy.check_upstream",
    "proxy.credentials.certificate",
    "proxy.credentials.azure_identity",
    "cryptography",
    "azure",
    "msal",
)


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return serving_modules(tmp_path_factory.mktemp("serving"))


def serving_modules(tmp_path: Path, **env: str) -> set[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AZURE_", "FOUNDRY_PROXY_", "IDENTITY_", "MSI_"))
    }
    result = run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,  # no .env file is found here
        env=clean
        | {
            "PYTHONPATH": str(ROOT),
            "FOUNDRY_PROXY_UPSTREAM": "http://127.0.0.1:9",
            "AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000001",
            "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000002",
            "AZURE_CLIENT_SECRET": "not-a-real-secret",
        }
        | env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def imported(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


def test_the_probe_sees_what_serving_imports(serving: set[str]) -> None:
    # A probe that imported nothing would pass every test below.
    for needed in ("proxy.app", "proxy.forwarding", "proxy.credentials.client_credentials"):
        assert needed in serving, needed


@pytest.mark.parametrize("name", NEVER_SERVING)
def test_serving_with_a_client_secret_leaves_out(serving: set[str], name: str) -> None:
    assert not imported(serving, name), f"{name} imported while serving"


def test_serving_with_metrics_off_leaves_out_prometheus(tmp_path: Path, serving: set[str]) -> None:
    # Metrics are on by default, so the probe does see prometheus_client when it is imported.
    assert imported(serving, "prometheus_client")
    off = serving_modules(tmp_path, FOUNDRY_PROXY_METRICS="false")
    assert imported(off, "proxy.forwarding")
    assert not imported(off, "prometheus_client"), "prometheus_client imported with metrics off"
    assert not imported(off, "proxy.metrics")
