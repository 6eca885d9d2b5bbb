"""The backend pool on a hand-driven clock: choice, weights, cooldowns, the circuit breaker,
the Retry-After forms and the deployment mapping (docs/backends.md)."""

from __future__ import annotations

import email.utils
import json
import random
from collections import Counter

import pytest

from proxy.backend_config import BackendSpec, PoolSpec
from proxy.backend_health import BACKOFF_MAX, MAX_COOLDOWN, reset_seconds, retry_after
from proxy.backends import Pool, all_cooling_down
from proxy.rewrite import BadTarget

WALL = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(*specs: BackendSpec, failures: int = 3, seconds: float = 30.0) -> tuple[Pool, Clock]:
    clock = Clock()
    return Pool(PoolSpec(specs, failures, seconds), clock, random.Random(7)), clock


A = BackendSpec("a", "https://a.openai.azure.com", priority=1)
B = BackendSpec("b", "https://b.openai.azure.com", priority=2)
C = BackendSpec("c", "https://c.openai.azure.com", priority=3)


def names(p: Pool) -> list[str]:
    return [b.name for b in p.attempts()]


def test_priority_order_and_cooldown_of_the_primary() -> None:
    p, clock = pool(A, B, C)
    assert names(p) == ["a", "b", "c"]
    p.backends[0].health.throttled(30)
    assert names(p) == ["b", "c"]
    clock.now += 29.9
    assert names(p) == ["b", "c"]
    clock.now += 0.2
    assert names(p) == ["a", "b", "c"]


def test_weights_split_load_within_ten_percent_over_1000_requests() -> None:
    heavy = BackendSpec("heavy", "https://h.openai.azure.com", weight=3)
    light = BackendSpec("light", "https://l.openai.azure.com", weight=1)
    p, _ = pool(heavy, light)
    first = Counter(next(iter(p.attempts())).name for _ in range(1000))
    # Within 10 % of the expected 750 (and so the light one within the same 75 of 250).
    assert abs(first["heavy"] - 750) <= 75, first
    assert first["heavy"] + first["light"] == 1000
    # The second choice within the group is the other one: a failover stays in the group.
    assert sorted(names(p)) == ["heavy", "light"]


def test_equal_weights_share_evenly() -> None:
    specs = [BackendSpec(n, f"https://{n}.openai.azure.com") for n in ("x", "y", "z")]
    p, _ = pool(*specs)
    first = Counter(next(iter(p.attempts())).name for _ in range(3000))
    assert all(900 <= first[n] <= 1100 for n in "xyz"), first


def test_all_cooling_down_gives_the_smallest_wait() -> None:
    p, clock = pool(A, B)
    p.backends[0].health.throttled(30)
    p.backends[1].health.throttled(12.2)
    assert names(p) == []
    assert not p.can_serve()
    assert p.soonest() == pytest.approx(12.2)
    reply = all_cooling_down(p.soonest())
    assert reply.status == 429
    assert dict(reply.headers)[b"retry-after"] == b"13"
    body = json.loads(reply.body(anthropic=False))
    assert body["error"]["code"] == "all_backends_cooling_down"
    assert "azure.com" not in body["error"]["message"]
    clock.now += 12.3
    assert names(p) == ["b"]
    assert p.can_serve()


def test_backoff_without_retry_after_doubles_and_is_capped() -> None:
    p, clock = pool(A, failures=100)
    health = p.backends[0].health
    waits = []
    for _ in range(9):
        health.failed(None)
        waits.append(round(health.ready_in(), 3))
        clock.now += health.ready_in()
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0]
    assert waits[-1] == BACKOFF_MAX
    health.succeeded()
    health.failed(None)
    assert health.ready_in() == 1.0


def test_a_huge_retry_after_is_capped() -> None:
    p, _ = pool(A, B)
    p.backends[0].health.throttled(86_400)
    assert p.backends[0].health.ready_in() == MAX_COOLDOWN


def test_one_backend_is_never_held_back() -> None:
    """A pool of one is the single upstream: its 429s and failures pass through to the client
    as before, rather than turning into the proxy's own 429."""
    p, _ = pool(A, failures=1)
    p.backends[0].health.failed(30)
    assert p.backends[0].health.label() == "open"
    assert names(p) == ["a"]
    assert p.can_serve()


def test_circuit_opens_after_consecutive_failures_then_one_probe_decides() -> None:
    p, clock = pool(A, B, failures=3, seconds=30)
    a = p.backends[0].health
    for _ in range(3):
        a.failed(0)
        clock.now += 1
    assert a.label() == "open"
    assert names(p) == ["b"]
    clock.now += 30
    assert a.label() == "half_open"
    # One request takes the probe; while it is out, others skip the backend.
    probe = p.attempts()
    assert next(probe).name == "a"
    assert names(p) == ["b"]
    a.failed(None)
    assert a.label() == "open"
    clock.now += 31
    assert next(iter(p.attempts())).name == "a"
    a.succeeded()
    assert a.label() == "closed"
    assert names(p) == ["a", "b"]


def test_a_probe_abandoned_without_a_verdict_is_freed() -> None:
    p, clock = pool(A, B, failures=1, seconds=5)
    p.backends[1].health.throttled(100)
    a = p.backends[0].health
    a.failed(0)
    clock.now += 5
    assert names(p) == ["a"]
    assert names(p) == []
    a.abandoned()
    assert names(p) == ["a"]


def test_429s_do_not_open_the_circuit_and_successes_reset_the_count() -> None:
    p, clock = pool(A, failures=2)
    a = p.backends[0].health
    for _ in range(5):
        a.throttled(0)
        clock.now += 1
    assert a.label() == "closed"
    a.failed(0)
    a.succeeded()
    clock.now += 1
    a.failed(0)
    assert a.label() in ("closed", "cooling_down")


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "30"}, 30.0),
        ({"retry-after-ms": "1500", "retry-after": "30"}, 1.5),
        ({"x-ms-retry-after-ms": "250"}, 0.25),
        ({"retry-after": email.utils.formatdate(WALL + 20, usegmt=True)}, 20.0),
        ({"retry-after": email.utils.formatdate(WALL - 20, usegmt=True)}, 0.0),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "1m30s"}, 90.0),
        (
            {
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-tokens": "1m",
            },
            2.0,
        ),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "nan"}, None),
        ({}, None),
    ],
)
def test_retry_after_forms(headers: dict[str, str], seconds: float | None) -> None:
    found = retry_after(headers, WALL)
    assert found == (None if seconds is None else pytest.approx(seconds, abs=1.01))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h2m3.5s", 3723.5), ("12", 12.0), ("0.5s", 0.5), ("m", None), ("", None), ("5x", None)],
)
def test_reset_durations(text: str, seconds: float | None) -> None:
    assert reset_seconds(text) == seconds


MAPPED = BackendSpec(
    "m", "https://m.openai.azure.com", deployments=(("gpt-4o", "gpt-4o-sweden"), ("e", "e2"))
)


def test_deployment_paths_are_mapped_and_validated() -> None:
    (m,) = pool(MAPPED)[0].backends
    assert (
        m.path_for("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21")
        == "/openai/deployments/gpt-4o-sweden/chat/completions?api-version=2024-10-21"
    )
    assert m.path_for("/openai/deployments/other/chat/completions") == (
        "/openai/deployments/other/chat/completions"
    )
    assert m.path_for("/openai/v1/chat/completions") == "/openai/v1/chat/completions"
    m.deployments["bad"] = "x/../y"
    with pytest.raises(BadTarget):
        m.path_for("/openai/deployments/bad/chat/completions")


def test_v1_body_models_are_mapped_other_bodies_pass_as_they_are() -> None:
    (m,) = pool(MAPPED)[0].backends
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hé"}]})
    mapped = json.loads(m.body_for("/openai/v1/chat/completions", body.encode()))
    assert mapped["model"] == "gpt-4o-sweden"
    assert mapped["messages"][0]["content"] == "hé"
    for path, raw in (
        ("/openai/v1/chat/completions", b'{"model": "unmapped"}'),
        ("/openai/v1/chat/completions", b"not json"),
        ("/openai/v1/chat/completions", b'["model"]'),
        ("/openai/deployments/gpt-4o/chat/completions", b'{"model": "gpt-4o"}'),
    ):
        assert m.body_for(path, raw) is raw


def test_no_global_state_two_pools_are_independent() -> None:
    p1, _ = pool(A)
    p2, _ = pool(A)
    p1.backends[0].health.throttled(30)
    assert names(p2) == ["a"]
