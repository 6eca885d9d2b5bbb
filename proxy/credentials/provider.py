"""TokenProvider: holds a fresh token per scope and refreshes it in the background.

The rules:
- one refresh task per scope is the only caller of the credential, so a cold burst of requests
  causes one token call (single flight);
- requests read the cached token without awaiting anything; they wait only when no valid token
  exists, for a bounded time, and only for a call under way or about to start: when the last
  call failed and the next is further off, they fail at once (see retry_in);
- a failed refresh keeps the old token while it is valid; when to call again, after a token or
  a failure, is schedule.py's;
- the refresh loop never dies, and it is cancelled and awaited at shutdown.

Validity is checked on two clocks: the monotonic one (immune to wall-clock steps) and the wall
clock, which keeps moving while a laptop sleeps when the monotonic clock does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cachetools import TLRUCache

from proxy.credentials.base import AccessToken, Credential
from proxy.credentials.codes import TokenErrorCode
from proxy.credentials.schedule import (
    RetryPolicy,
    expiry_margin,
    refresh_after,
    retry_after_failure,
)
from proxy.errors import CredentialError, CredentialUnavailable

log = logging.getLogger("foundry_proxy.token")


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


@dataclass(frozen=True, slots=True)
class HeldToken:
    token: str = field(repr=False)
    usable_until: float  # monotonic
    usable_until_wall: float


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """What /readyz and the logs say about one scope."""

    scope: str
    valid: bool
    expires_in: float | None
    error: CredentialError | None


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event`` at most ``seconds``.

    asyncio.timeout rather than wait_for: on Python 3.11, wait_for can swallow a cancellation
    that arrives together with the event (fixed in 3.12), and cancellation is how a request
    whose client left, or the refresh loop at shutdown, is stopped.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def fingerprint(token: str) -> str:
    """A short, one-way label to tell tokens apart in logs."""
    return hashlib.sha256(token.encode()).hexdigest()[:10]


class _Scope:
    """Mutable per-scope state, owned by one TokenProvider."""

    def __init__(self) -> None:
        self.error: CredentialError | None = None
        self.failures = 0
        self.fetching = False
        self.next_attempt = 0.0
        self.last_attempt = float("-inf")
        self.last_forced = float("-inf")
        self.wake = asyncio.Event()
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        # Waiters hold the old event; a fresh one serves the next round.
        self.changed.set()
        self.changed = asyncio.Event()


class TokenProvider:
    """Per-scope token cache with background refresh. Create and use inside the event loop."""

    def __init__(
        self,
        credential: Credential,
        *,
        primary_scope: str,
        wait_timeout: float = 10.0,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        observer: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.credential = credential
        self.primary_scope = primary_scope
        self._wait_timeout = wait_timeout
        self._policy = policy or RetryPolicy()
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._scopes: dict[str, _Scope] = {}
        self._cache: TLRUCache[str, HeldToken] = TLRUCache(
            maxsize=64, ttu=lambda _k, held, _now: held.usable_until, timer=self._clock.monotonic
        )
        self._closed = False
        #: Told (scope, succeeded) after every token call: the metrics' refresh counters.
        self._observer = observer

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start fetching the primary scope's token; returns at once."""
        self._scope(self.primary_scope)

    async def aclose(self) -> None:
        """Stop every refresh task and wait for them to end."""
        self._closed = True
        tasks = [s.task for s in self._scopes.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._cache.clear()
        await self.credential.aclose()

    # -- request side ------------------------------------------------------------------------

    def token_now(self, scope: str) -> str | None:
        """The cached token if it is valid now; never awaits."""
        held = self._cache.get(scope)
        if held is not None:
            if held.usable_until_wall > self._clock.time():
                return held.token
            # The wall clock ran past expiry while the monotonic clock did not (suspend).
            self._cache.pop(scope, None)
            state = self._scope(scope)
            if not state.failures:
                state.wake.set()
            return None
        self._scope(scope)
        return None

    async def token(self, scope: str) -> str:
        """A valid token, waiting at most wait_timeout when none is held.

        Raises the last CredentialError (or CredentialUnavailable when none happened yet).
        """
        token = self.token_now(scope)
        if token is not None:
            return token
        state = self._scope(scope)
        now = self._clock.monotonic()
        deadline = now + self._wait_timeout
        # Past this, the next scheduled call is not worth holding the request for.
        horizon = now + min(self._wait_timeout, self._policy.imminent_retry)
        while True:
            error = state.error
            if (
                error is not None
                and not state.fetching
                and (error.permanent or state.next_attempt > horizon)
                and not self._retry_on_demand(state, error)
            ):
                raise error
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise state.error or CredentialUnavailable(
                    f"no token from Entra ID within {self._wait_timeout:g} s",
                    code=TokenErrorCode.TOKEN_PENDING,
                )
            await _wait(state.changed, remaining)
            token = self.token_now(scope)
            if token is not None:
                return token

    def retry_in(self, scope: str) -> float | None:
        """Seconds until the next token call, when the last one failed and none is under way
        (a request now would get the same error); None when a call is under way or none
        failed."""
        state = self._scopes.get(scope)
        if state is None or state.error is None or state.fetching:
            return None
        return max(0.0, state.next_attempt - self._clock.monotonic())

    def _retry_on_demand(self, state: _Scope, error: CredentialError) -> bool:
        """After a configuration error, let a request start one attempt now if the last one is
        old enough (see RetryPolicy.on_demand_interval); True when it did."""
        if not error.permanent:
            return False
        now = self._clock.monotonic()
        if now - state.last_attempt < self._policy.on_demand_interval:
            return False
        state.last_attempt = now  # claimed: concurrent requests join this attempt
        state.wake.set()
        return True

    def invalidate(self, scope: str, rejected: str) -> bool:
        """The upstream refused ``rejected``: refresh now, unless that was just done.

        Returns True when a token other than ``rejected`` is held or on its way.
        """
        current = self.token_now(scope)
        if current is not None and current != rejected:
            return True
        state = self._scope(scope)
        now = self._clock.monotonic()
        if state.failures:
            return False
        if now - state.last_forced < self._policy.forced_refresh_interval:
            # Others who got the same 401 join a forced refresh still under way.
            return state.fetching or state.wake.is_set()
        state.last_forced = now
        log.info("the upstream refused the token for %s; refreshing it now", scope)
        state.wake.set()
        return True

    async def refreshed(self, scope: str, rejected: str) -> str | None:
        """A token other than ``rejected`` (which the upstream refused), or None.

        Forces one refresh (see invalidate) and waits for it at most wait_timeout.
        """
        if not self.invalidate(scope, rejected):
            return None
        current = self.token_now(scope)
        if current is not None and current != rejected:
            return current
        await _wait(self._scope(scope).changed, self._wait_timeout)
        current = self.token_now(scope)
        return current if current != rejected else None

    def statuses(self) -> list[TokenStatus]:
        """The status of every scope in use (for metrics)."""
        return [self.status(scope) for scope in list(self._scopes)]

    def status(self, scope: str | None = None) -> TokenStatus:
        scope = scope or self.primary_scope
        held = self._cache.get(scope)
        state = self._scopes.get(scope)
        error = state.error if state else None
        if held is None or held.usable_until_wall <= self._clock.time():
            return TokenStatus(scope, False, None, error)
        expires_in = held.usable_until - self._clock.monotonic()
        return TokenStatus(scope, True, expires_in, error)

    # -- refresh side ------------------------------------------------------------------------

    def _scope(self, scope: str) -> _Scope:
        state = self._scopes.get(scope)
        if state is None:
            state = self._scopes[scope] = _Scope()
            if not self._closed:
                state.task = asyncio.get_running_loop().create_task(
                    self._run(scope, state), name=f"token-refresh {scope}"
                )
        return state

    async def _run(self, scope: str, state: _Scope) -> None:
        while True:
            try:
                delay = await self._fetch(scope, state)
            except Exception as exc:
                # Last line of defence: the loop must outlive any bug in a credential.
                log.exception("unexpected error while refreshing the token for %s", scope)
                state.fetching = False
                failure = CredentialUnavailable(
                    f"internal error while getting a token ({type(exc).__name__})",
                    code=TokenErrorCode.TOKEN_INTERNAL_ERROR,
                )
                delay = self._failed(scope, state, failure)
            state.next_attempt = self._clock.monotonic() + delay
            state.wake.clear()
            await _wait(state.wake, delay)

    async def _fetch(self, scope: str, state: _Scope) -> float:
        """One token call; returns the seconds until the next one."""
        started = self._clock.monotonic()
        started_wall = self._clock.time()
        state.last_attempt = started
        state.fetching = True
        try:
            token = await self.credential.get_token(scope)
        except CredentialError as err:
            return self._failed(scope, state, err)
        finally:
            state.fetching = False
        return self._store(scope, state, token, started, started_wall)

    def _store(
        self, scope: str, state: _Scope, token: AccessToken, started: float, started_wall: float
    ) -> float:
        lifetime = token.expires_in
        margin = expiry_margin(lifetime)
        held = HeldToken(
            token=token.token,
            usable_until=started + lifetime - margin,
            usable_until_wall=started_wall + lifetime - margin,
        )
        self._cache[scope] = held
        refresh = refresh_after(lifetime, token.refresh_in, self._rng)
        recovered = state.failures > 0
        state.failures = 0
        state.error = None
        state.notify()
        if self._observer is not None:
            self._observer(scope, True)
        log.log(
            logging.INFO if recovered or lifetime > 300 else logging.DEBUG,
            "token for %s acquired via %s (fingerprint %s, valid %.0f s, next refresh in %.0f s)",
            scope,
            self.credential.kind,
            fingerprint(token.token),
            lifetime,
            refresh,
        )
        elapsed = self._clock.monotonic() - started
        return max(self._policy.min_delay, refresh - elapsed)

    def _failed(self, scope: str, state: _Scope, err: CredentialError) -> float:
        state.failures += 1
        state.error = err
        held = self._cache.get(scope)
        left = None if held is None else held.usable_until - self._clock.monotonic()
        delay = retry_after_failure(self._policy, err, state.failures, left, self._rng)
        state.notify()
        if self._observer is not None:
            self._observer(scope, False)
        log.warning(
            "token for %s not refreshed via %s: %s: %s%s%s (%s; retry in %.1f s)",
            scope,
            self.credential.kind,
            err.code or type(err).__name__,
            err.message,
            f" - {err.hint}" if err.hint else "",
            f" [correlation id {err.correlation_id}]" if err.correlation_id else "",
            "still using the current token" if held is not None else "no valid token",
            delay,
        )
        return delay
