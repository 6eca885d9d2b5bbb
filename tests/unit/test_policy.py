"""The policy's verdicts and its catalogue of known operations, as pure functions."""

from __future__ import annotations

import pytest

from proxy.operations import KNOWN_OPERATIONS
from proxy.policy import DEFAULT_RULES, Policy, parse_rules

DEFAULT = Policy(parse_rules(",".join(DEFAULT_RULES)))


def _example(pattern: str) -> str:
    return pattern.replace("/**", "/x/y").replace("*", "x1")


def test_every_default_rule_is_a_known_operation() -> None:
    """The 404 "no such operation" must never hide something the default policy allows."""
    empty = Policy([])
    for rule in DEFAULT_RULES:
        method, pattern = rule.split()
        assert empty.decide(method, _example(pattern)) == 403, rule


def test_every_known_operation_parses_and_is_refused_with_403_when_not_allowed() -> None:
    empty = Policy([])
    for op in KNOWN_OPERATIONS:
        methods, pattern = op.split()
        assert parse_rules(",".join(f"{m} {pattern}" for m in methods.split(",")))
        assert empty.decide(methods.split(",")[0], _example(pattern)) == 403, op


@pytest.mark.parametrize(
    ("method", "path", "verdict"),
    [
        ("POST", "/openai/v1/chat/completions", 200),
        ("GET", "/openai/v1/models", 200),
        ("DELETE", "/openai/v1/files/f1", 405),  # files are readable by default
        ("POST", "/openai/v1/fine_tuning/jobs", 403),  # known, left out by default
        ("POST", "/openai/v1/chat/completion", 404),
        ("POST", "/openai/v1/Chat/Completions", 404),
        ("GET", "/openai/v1/does/not/exist", 404),
        ("POST", "/openai/deployments/d/chat/completion", 404),
        ("GET", "/api/projects/p/connections/c1", 403),
        ("GET", "/api/projects/p/conections", 404),
        ("TRACE", "/openai/v1/models", 405),
        ("POST", "/anthropic/v1/messages", 200),
        ("POST", "/anthropic/v1/messages/count_tokens", 200),
        ("GET", "/anthropic/v1/messages", 405),
        ("POST", "/anthropic/v1/message", 404),
    ],
)
def test_verdicts(method: str, path: str, verdict: int) -> None:
    assert DEFAULT.decide(method, path) == verdict


def test_an_allowed_path_is_known_whatever_the_list_says() -> None:
    policy = Policy(
        parse_rules("GET /openai/v1/brand_new/*"), parse_rules("GET /openai/v1/brand_new/x")
    )
    assert policy.decide("GET", "/openai/v1/brand_new/a") == 200
    assert policy.decide("POST", "/openai/v1/brand_new/a") == 405
    assert policy.decide("GET", "/openai/v1/brand_new/x") == 403  # denied, not unknown
    assert policy.decide("GET", "/openai/v1/brand_old/a") == 404


@pytest.mark.parametrize(
    ("method", "path", "meant"),
    [
        ("POST", "/v1/chat/completion", "POST /v1/chat/completions"),
        ("GET", "/v1/chat/completion", "GET /v1/chat/completions"),  # stored completions
        ("POST", "/openai/v1/chat/completion", "POST /openai/v1/chat/completions"),
        (
            "POST",
            "/openai/deployments/my-gpt/embedding",
            "POST /openai/deployments/my-gpt/embeddings",
        ),
        ("GET", "/v1/file/file-abc/content", "GET /v1/files/file-abc/content"),
        ("POST", "/models/chat/completion", "POST /models/chat/completions"),
        ("GET", "/api/projects/p1/deployment", "GET /api/projects/p1/deployments"),
        ("POST", "/chat/completions", "POST /v1/chat/completions"),
        ("GET", "/openaix/v1/models", "GET /openai/v1/models"),
        ("POST", "/anthropic/v1/message", "POST /anthropic/v1/messages"),
        ("POST", "/anthropic/v1/count_tokens", "POST /anthropic/v1/messages/count_tokens"),
    ],
)
def test_closest_names_what_was_meant_in_the_clients_terms(
    method: str, path: str, meant: str
) -> None:
    assert DEFAULT.closest(method, path) == (meant, True)


def test_closest_says_when_nothing_is_close() -> None:
    known, close = DEFAULT.closest("GET", "/v1/does/not/exist")
    assert not close
    assert known.startswith("GET /v1/")


def test_closest_is_bounded_for_long_paths_and_many_paths() -> None:
    """A client sending long or ever-different wrong paths: the comparison reads at most 200
    characters and the cache of answers stays bounded."""
    policy = Policy(parse_rules(",".join(DEFAULT_RULES)))
    known, _ = policy.closest("GET", "/v1/" + "x" * 100_000)
    assert len(known) < 300
    for i in range(1000):
        policy.closest("POST", f"/v1/chat/completion{i}")
    assert len(policy._suggester._closest) <= 256
    assert policy.closest("POST", "/v1/chat/completion") == ("POST /v1/chat/completions", True)
