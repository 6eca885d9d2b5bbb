"""TokenProvider against a scripted in-memory credential (pure asyncio, no sockets).

Every test runs on virtual time (tests/support/virtual_time.py): the provider's clocks, its
waits and the tests' sleeps all read the event loop's clock, which jumps from timer to timer.
So the instants asserted below are exact, whatever the load on the machine, and the jitter is
seeded.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from proxy.credentials.base import AccessToken
from proxy.credentials.provider import TokenProvider
from proxy.credentials.schedule import RetryPolicy
from proxy.errors import AuthenticationFailed, CredentialError, CredentialUnavailable
from tests.support import virtual_time
from tests.support.virtual_time import LoopClock

SCOPE = "https://cognitiveservices.azure.com/.default"
FAST = RetryPolicy(
    transient_first=0.1,
    transient_max=0.4,
    transient_max_without_token=0.4,
    config_first=5.0,
    config_max=5.0,
    forced_refresh_interval=1.0,
    min_delay=0.05,
)
T = TypeVar("T")

Answer = AccessToken | Exception


class ScriptedCredential:
    kind = "scripted"

    def __init__(self, *answers: Answer, lifetime: float = 100.0, delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.lifetime = lifetime
        self.delay = delay
        self.calls: list[float] = []
        self.closed = False

    async def get_token(self, scope: str) -> AccessToken:
        self.calls.append(now())
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return AccessToken(f"token-{len(self.calls)}", self.lifetime)

    async def aclose(self) -> None:
        self.closed = True


def now() -> float:
    """The virtual monotonic clock (seconds since the test's loop started)."""
    return asyncio.get_running_loop().time()


def run(
    credential: ScriptedCredential,
    test: Callable[[TokenProvider], Awaitable[T]],
    *,
    policy: RetryPolicy = FAST,
    clock: LoopClock | None = None,
    **kwargs: object,
) -> T:
    """Run ``test`` against a started provider on virtual time; the provider is closed after."""

    async def main() -> T:
        provider = TokenProvider(
            credential,
            primary_scope=SCOPE,
            policy=policy,
            clock=clock or LoopClock(),
            rng=random.Random(14),
            **kwargs,  # type: ignore[arg-type]
        )
        provider.start()
        try:
            return await test(provider)
        finally:
            await provider.aclose()

    return virtual_time.run(main())


def test_cold_burst_is_single_flight() -> None:
    credential = ScriptedCredential(delay=0.2)

    async def test(p: TokenProvider) -> list[str]:
        return await asyncio.gather(*(p.token(SCOPE) for _ in range(200)))

    tokens = run(credential, test)
    assert set(tokens) == {"token-1"}
    assert len(credential.calls) == 1


def test_refresh_in_is_honoured() -> None:
    credential = ScriptedCredential(AccessToken("first", 100.0, refresh_in=0.3))

    async def test(p: TokenProvider) -> str | None:
        await asyncio.sleep(0.6)
        return p.token_now(SCOPE)

    assert run(credential, test) == "token-2"
    assert len(credential.calls) == 2
    # refresh_in, less up to 10 % of jitter.
    assert 0.27 <= credential.calls[1] - credential.calls[0] <= 0.3


def test_refresh_at_half_life() -> None:
    credential = ScriptedCredential(lifetime=1.0)

    async def test(p: TokenProvider) -> None:
        await asyncio.sleep(1.2)

    run(credential, test)
    gaps = [b - a for a, b in zip(credential.calls, credential.calls[1:], strict=False)]
    # Half the lifetime, less up to 10 % of jitter: calls near 0, 0.5 and 1.0 s.
    assert len(gaps) == 2
    assert all(0.45 <= g <= 0.5 for g in gaps), gaps


def test_failed_refresh_keeps_the_valid_token() -> None:
    outage = [CredentialUnavailable("down", code="token_unreachable") for _ in range(50)]
    credential = ScriptedCredential(AccessToken("kept", 1.5), *outage)

    async def test(p: TokenProvider) -> list[str | None]:
        seen = []
        for _ in range(12):
            await asyncio.sleep(0.1)
            seen.append(p.token_now(SCOPE))
        return seen

    seen = run(credential, test)
    assert seen == ["kept"] * 12
    # Backoff between the refresh at 0.75 s and now: several tries, never a hot loop.
    assert 2 <= len(credential.calls) <= 8


def test_permanent_error_fails_requests_at_once_and_backs_off() -> None:
    bad = AuthenticationFailed("Invalid client secret", code="AADSTS7000215", hint="use the Value")
    credential = ScriptedCredential(bad)

    async def test(p: TokenProvider) -> tuple[CredentialError, float]:
        await asyncio.sleep(0.1)
        started = now()
        with pytest.raises(CredentialError) as info:
            await p.token(SCOPE)
        elapsed = now() - started
        await asyncio.sleep(0.5)
        return info.value, elapsed

    error, elapsed = run(credential, test)
    assert error.code == "AADSTS7000215"
    assert elapsed == 0  # no wait at all
    assert len(credential.calls) == 1


def test_a_fixed_configuration_is_picked_up_by_the_next_request() -> None:
    """After a configuration error the backoff is long (5 s here), but a request may start one
    attempt once on_demand_interval has passed: `az login` works without waiting minutes."""
    bad = AuthenticationFailed("not logged in", code="cli_not_logged_in")
    credential = ScriptedCredential(bad, bad)
    policy = RetryPolicy(config_first=5.0, config_max=5.0, on_demand_interval=0.3, min_delay=0.05)

    async def test(p: TokenProvider) -> list[str]:
        await asyncio.sleep(0.1)
        outcomes = []
        for _ in range(2):  # within the interval: the error at once, no new call
            with pytest.raises(CredentialError):
                await p.token(SCOPE)
            outcomes.append(f"error after {len(credential.calls)} call(s)")
        await asyncio.sleep(0.35)
        with pytest.raises(CredentialError):  # one on-demand attempt, which fails again
            await p.token(SCOPE)
        outcomes.append(f"error after {len(credential.calls)} call(s)")
        await asyncio.sleep(0.35)
        outcomes.append(await p.token(SCOPE))  # fixed by now: the next attempt succeeds
        return outcomes

    assert run(credential, test, policy=policy) == [
        "error after 1 call(s)",
        "error after 1 call(s)",
        "error after 2 call(s)",
        "token-3",
    ]


def test_transient_error_then_success_serves_waiting_requests() -> None:
    credential = ScriptedCredential(CredentialUnavailable("blip"), AccessToken("late", 100.0))

    async def test(p: TokenProvider) -> str:
        return await p.token(SCOPE)

    assert run(credential, test) == "late"
    assert len(credential.calls) == 2


def test_retry_after_is_honoured() -> None:
    credential = ScriptedCredential(CredentialUnavailable("throttled", retry_after=0.8))

    async def test(p: TokenProvider) -> str:
        return await p.token(SCOPE)

    assert run(credential, test) == "token-2"
    # The backoff alone would be 0.05-0.1 s: the wait is Retry-After's.
    assert credential.calls[1] - credential.calls[0] == pytest.approx(0.8)


def test_loop_survives_a_bug_in_a_credential() -> None:
    credential = ScriptedCredential(RuntimeError("bug"))

    async def test(p: TokenProvider) -> str:
        return await p.token(SCOPE)

    assert run(credential, test, wait_timeout=5.0) == "token-2"


def test_waiting_is_bounded() -> None:
    credential = ScriptedCredential(delay=3.0)

    async def test(p: TokenProvider) -> tuple[CredentialError, float]:
        started = now()
        with pytest.raises(CredentialError) as info:
            await p.token(SCOPE)
        return info.value, now() - started

    error, elapsed = run(credential, test, wait_timeout=0.3)
    assert error.code == "token_pending"
    assert elapsed == pytest.approx(0.3)


def test_wall_clock_jump_forces_a_refresh() -> None:
    """E51: asleep for 3 h: the monotonic clock stood still, the token did not."""
    clock = LoopClock()
    credential = ScriptedCredential(lifetime=3600.0)

    async def test(p: TokenProvider) -> tuple[str | None, str]:
        first = await p.token(SCOPE)
        clock.jump = 3 * 3600
        stale = p.token_now(SCOPE)
        fresh = await p.token(SCOPE)
        assert first == "token-1"
        return stale, fresh

    stale, fresh = run(credential, test, clock=clock)
    assert stale is None
    assert fresh == "token-2"


def test_forced_refresh_is_rate_limited() -> None:
    credential = ScriptedCredential()

    async def test(p: TokenProvider) -> tuple[str | None, str | None]:
        first = await p.token(SCOPE)
        second = await p.refreshed(SCOPE, first)
        third = await p.refreshed(SCOPE, second or "")
        return second, third

    second, third = run(credential, test)
    assert second == "token-2"
    assert third is None
    assert len(credential.calls) == 2


def test_scopes_are_cached_separately() -> None:
    credential = ScriptedCredential()

    async def test(p: TokenProvider) -> tuple[str, str, str]:
        a = await p.token(SCOPE)
        b = await p.token("https://ai.azure.com/.default")
        return a, b, await p.token(SCOPE)

    a, b, again = run(credential, test)
    assert a != b
    assert again == a


def test_aclose_stops_every_task() -> None:
    credential = ScriptedCredential()

    async def main() -> list[asyncio.Task[object]]:
        p = TokenProvider(credential, primary_scope=SCOPE, policy=FAST, clock=LoopClock())
        p.start()
        await p.token(SCOPE)
        await p.token("https://ai.azure.com/.default")
        await p.aclose()
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert virtual_time.run(main()) == []
    assert credential.closed


def test_concurrent_401s_all_wait_for_the_one_forced_refresh() -> None:
    credential = ScriptedCredential(AccessToken("old", 100.0), delay=0.3)

    async def test(p: TokenProvider) -> list[str | None]:
        rejected = await p.token(SCOPE)
        return await asyncio.gather(*(p.refreshed(SCOPE, rejected) for _ in range(5)))

    assert run(credential, test) == ["token-2"] * 5
    assert len(credential.calls) == 2


class PacedCredential(ScriptedCredential):
    """A ScriptedCredential whose calls each take their own time (``delays``, in order)."""

    def __init__(self, *answers: Answer, delays: list[float]) -> None:
        super().__init__(*answers)
        self.delays = delays

    async def get_token(self, scope: str) -> AccessToken:
        self.delay = self.delays.pop(0) if self.delays else 0.0
        return await super().get_token(scope)


# The token service down: retries 1.5-3 s apart, a request waits only for one due in 0.5 s.
DOWN = RetryPolicy(
    transient_first=3.0, transient_max_without_token=3.0, imminent_retry=0.5, min_delay=0.05
)


def test_known_outage_fails_requests_at_once() -> None:
    """The first request waits for the call under way; once it failed and the next call is
    seconds off, requests get the error at once with the time to that call, and no request
    makes a call of its own."""
    down = [CredentialUnavailable("unreachable", code="token_unreachable") for _ in range(5)]
    credential = PacedCredential(*down, delays=[0.3])

    async def test(p: TokenProvider) -> list[tuple[str, float, float | None]]:
        seen = []
        for _ in range(3):
            started = now()
            with pytest.raises(CredentialError) as info:
                await p.token(SCOPE)
            seen.append((info.value.code, now() - started, p.retry_in(SCOPE)))
        return seen

    seen = run(credential, test, policy=DOWN, wait_timeout=10)
    first, *later = seen
    assert first[0] == "token_unreachable"
    assert first[1] == pytest.approx(0.3), "the first request did not wait for the call under way"
    for code, elapsed, retry_in in later:
        assert code == "token_unreachable"
        assert elapsed == 0, "a request was held although no token could come in time"
        assert retry_in is not None
        # the backoff: half to all of transient_first (1.5-3 s)
        assert retry_in == pytest.approx(2.25, abs=0.75)
    assert len(credential.calls) == 1


def test_a_request_during_a_retry_under_way_waits_for_it() -> None:
    """After a failure the next call is due in 1.5-3 s; a request arriving while that call is
    under way (slow, 0.5 s) still waits for it and gets its token."""
    credential = PacedCredential(
        CredentialUnavailable("unreachable", code="token_unreachable"),
        AccessToken("recovered", 100.0),
        delays=[0.0, 0.5],
    )

    async def test(p: TokenProvider) -> tuple[float | None, str, float]:
        while not credential.calls:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        retry_in = p.retry_in(SCOPE)
        while len(credential.calls) < 2:
            await asyncio.sleep(0.01)
        assert p.retry_in(SCOPE) is None  # a call is under way
        started = now()
        token = await p.token(SCOPE)
        return retry_in, token, now() - started

    retry_in, token, waited = run(credential, test, policy=DOWN, wait_timeout=10)
    assert retry_in is not None
    # the backoff (1.5-3 s), asked 0.05 s after the failure
    assert retry_in == pytest.approx(2.25 - 0.05, abs=0.75)
    assert token == "recovered"
    # The rest of the 0.5 s call, seen within one 0.01 s poll of its start.
    assert 0.5 - 0.01 <= waited <= 0.5


def test_an_imminent_retry_is_waited_for() -> None:
    """A retry due within imminent_retry (here 1.5-3 s away, within 5 s) is worth waiting for:
    a blip at startup costs the first request a moment, not an error."""
    policy = RetryPolicy(
        transient_first=3.0, transient_max_without_token=3.0, imminent_retry=5.0, min_delay=0.05
    )
    credential = ScriptedCredential(CredentialUnavailable("blip"), AccessToken("late", 100.0))

    async def test(p: TokenProvider) -> str:
        return await p.token(SCOPE)

    assert run(credential, test, policy=policy, wait_timeout=10) == "late"
    assert len(credential.calls) == 2
    assert credential.calls[1] - credential.calls[0] == pytest.approx(2.25, abs=0.75)
