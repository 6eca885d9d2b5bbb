"""Settings for several resources: FOUNDRY_PROXY_UPSTREAM's list and the backends file, every
problem named (docs/backends.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.backend_config import pool_from_upstream
from proxy.settings import load_settings
from tests.support.backends_toml import backends_toml
from tests.support.settings_env import APP_CREDENTIAL as CREDENTIAL
from tests.support.settings_env import clear_outside_settings, settings_problems

SECRET = "CANARY-SECRET-backends-0123456789"


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_outside_settings(monkeypatch)


def problems(**values: object) -> list[str]:
    return settings_problems(**CREDENTIAL | values)


def test_one_upstream_is_a_pool_of_one() -> None:
    s = load_settings(**CREDENTIAL, upstream="https://MyRes.openai.azure.com/")
    assert s.upstream == "https://myres.openai.azure.com"
    (only,) = s.pool.backends
    assert (only.name, only.origin, only.weight) == ("myres", s.upstream, 1)


def test_a_comma_separated_list_is_a_pool_in_priority_order() -> None:
    s = load_settings(
        **CREDENTIAL,
        upstream="https://swe.openai.azure.com, https://fra.openai.azure.com,http://127.0.0.1:9",
    )
    assert [(b.name, b.priority) for b in s.pool.backends] == [
        ("swe", 1),
        ("fra", 2),
        ("backend3", 3),
    ]
    assert s.upstream == "https://swe.openai.azure.com"  # the primary, for `check`


def test_same_first_label_gets_unique_names() -> None:
    spec = pool_from_upstream("https://res.openai.azure.com,https://res.services.ai.azure.com")
    assert [b.name for b in spec.backends] == ["res", "res-2"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://a.openai.azure.com,http://b.openai.azure.com", "item 2: must use https://"),
        ("https://a.openai.azure.com,,https://b.openai.azure.com", "item 2 of the list is empty"),
        ("https://a.openai.azure.com,https://A.openai.azure.com/", "item 2 repeats"),
        (f"https://a.openai.azure.com,https://u:{SECRET}@b.openai.azure.com", "user name"),
        ("https://a.openai.azure.com/openai", "without the path"),
    ],
)
def test_each_origin_of_the_list_gets_the_single_upstream_rule(value: str, message: str) -> None:
    found = problems(upstream=value)
    assert any(p.startswith("FOUNDRY_PROXY_UPSTREAM:") and message in p for p in found), found
    assert SECRET not in "\n".join(found)


def test_upstream_or_backends_file_is_required() -> None:
    found = problems()
    assert any("FOUNDRY_PROXY_UPSTREAM: is required" in p for p in found)


GOOD_FILE = backends_toml(
    {
        "name": "ptu",
        "origin": "https://ptu.openai.azure.com",
        "priority": 1,
        "deployments": {"gpt-4o": "gpt-4o-ptu"},
    },
    {"name": "paygo-a", "origin": "https://a.openai.azure.com", "priority": 2, "weight": 3},
    {
        "name": "paygo-b",
        "origin": "https://b.services.ai.azure.com",
        "priority": 2,
        "scope": "https://cognitiveservices.azure.com/.default",
    },
    breaker_failures=3,
    breaker_seconds=10,
)


def test_a_backends_file(tmp_path: Path) -> None:
    path = tmp_path / "backends.toml"
    path.write_text(GOOD_FILE)
    s = load_settings(**CREDENTIAL, backends_file=path)
    assert [b.name for b in s.pool.backends] == ["ptu", "paygo-a", "paygo-b"]
    assert s.upstream == "https://ptu.openai.azure.com"
    assert dict(s.pool.backends[0].deployments) == {"gpt-4o": "gpt-4o-ptu"}
    assert s.pool.backends[1].weight == 3
    assert s.pool.backends[2].scope == "https://cognitiveservices.azure.com/.default"
    assert (s.pool.breaker_failures, s.pool.breaker_seconds) == (3, 10.0)
    # The settings survive being rebuilt (auto-detection does that).
    assert s.with_detected_credential("secret").pool == s.pool


# Well-formed TOML whose every value or key is wrong for a backends file.
BAD_FILE = backends_toml(
    {"name": "Sweden Central", "origin": "http://evil.example.com", "weight": 0, "prioritee": 2},
    {
        "name": "b",
        "origin": f"https://u:{SECRET}@b.openai.azure.com",
        "scope": "https://cognitiveservices.azure.com",
        "deployments": {"gpt-4o": "../../x"},
    },
    {"name": "b"},
    breaker_seconds=-1,
    colour="blue",
)


def test_every_problem_of_a_backends_file_is_named_without_values(tmp_path: Path) -> None:
    path = tmp_path / "backends.toml"
    path.write_text(BAD_FILE)
    found = problems(backends_file=path)
    joined = "\n".join(found)
    for expected in (
        "breaker_seconds must be",
        "unknown key 'colour'",
        "backend 1: name is required",
        "backend 1: origin must use https://",
        "backend 1: weight must be",
        "backend 1: unknown key 'prioritee'",
        "backend 2 (b): origin must not contain a user name",
        "backend 2 (b): scope must be",
        "backend 2 (b): deployments: the name given for 'gpt-4o' is not a deployment name",
        "backend 3 (b): origin is required",
    ):
        assert expected in joined, (expected, found)
    assert SECRET not in joined
    assert "evil.example.com" not in joined
    assert all(p.startswith("FOUNDRY_PROXY_BACKENDS_FILE (backends.toml)") for p in found), found


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Hand-written: the point is a file that is not TOML at all.
        ("[[backend]\n", "is not valid TOML"),
        (backends_toml(breaker_failures=2), "holds no backend"),
        (
            backends_toml(
                {"name": "a", "origin": "https://a.openai.azure.com"},
                {"name": "a", "origin": "https://b.openai.azure.com"},
            ),
            "the name 'a' is used twice",
        ),
        # A trailing newline would end up in log lines and metric labels.
        (
            backends_toml({"name": "east\n", "origin": "https://a.openai.azure.com"}),
            "backend 1: name is required",
        ),
    ],
)
def test_broken_backends_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "backends.toml"
    path.write_text(text)
    assert any(message in p for p in problems(backends_file=path))


def test_not_both_and_the_file_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "backends.toml"
    path.write_text(GOOD_FILE)
    found = problems(upstream="https://a.openai.azure.com", backends_file=path)
    assert any("not both" in p for p in found)
    found = problems(backends_file=tmp_path / "missing.toml")
    assert any(p.startswith("FOUNDRY_PROXY_BACKENDS_FILE:") for p in found)
