"""When the token provider calls its credential next: after a token arrives, and after a failure.

Pure arithmetic on the token's timing and the failure count, so the schedule can be read (and
tested) apart from the provider's tasks and state:
- refresh at the earlier of the server's ``refresh_in`` and half the lifetime, a little early by
  jitter, so half the lifetime is left as outage tolerance;
- after a failure, capped exponential backoff with jitter, honouring Retry-After; configuration
  errors back off longest, and a held token is retried at least twice before it runs out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from proxy.errors import CredentialError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff after failed token calls, in seconds."""

    transient_first: float = 1.0
    transient_max: float = 60.0
    # With no valid token every request fails, so retry a transient failure sooner: recovery
    # within seconds of Entra coming back matters more than a few extra calls during an outage.
    transient_max_without_token: float = 10.0
    # A rejected secret or unknown tenant will not fix itself in a second; asking again quickly
    # only adds sign-in failures to the tenant's logs (and can trip Entra's throttling).
    config_first: float = 30.0
    config_max: float = 600.0
    # openai 2.x/3.x SDKs skip their own retry when Retry-After exceeds 120 s, and Entra never
    # asks for more than minutes; cap what a misbehaving server can make us wait.
    max_retry_after: float = 3600.0
    # A 401 storm must not become a token-call storm: at most one forced refresh this often.
    forced_refresh_interval: float = 5.0
    # Never schedule the next call sooner than this, whatever the token's timing says.
    min_delay: float = 0.5
    # After a configuration error, a request may trigger one attempt this often, ahead of the
    # long backoff: a user who just fixed the cause (ran `az login`, uploaded the certificate,
    # rotated the secret file) sees it work on the next request rather than minutes later.
    # The same rate as config_first, so Entra sees no more failed sign-ins than before.
    on_demand_interval: float = 30.0
    # With no valid token and the last call failed, a request waits for the next call only
    # when it is due this soon (a first retry after a blip). A later one means the token
    # service is down: the request is answered at once instead of held for the whole token
    # wait, once per client retry (the openai SDK surfaced such a 503 only after ~34 s).
    imminent_retry: float = 1.0


def expiry_margin(lifetime: float) -> float:
    """How long before its expiry (measured from when the call was sent, so erring on the early
    side) a token stops being sent: never seconds before it expires upstream."""
    return min(60.0, lifetime * 0.1)


def refresh_after(lifetime: float, refresh_in: float | None, rng: random.Random) -> float:
    """Seconds from the call to the next refresh of a token that just arrived."""
    refresh = lifetime / 2
    if refresh_in is not None:
        refresh = min(refresh, refresh_in)
    # Jitter spreads the refreshes of many replicas started together.
    return refresh - rng.uniform(0.0, min(60.0, refresh * 0.1))


def retry_after_failure(
    policy: RetryPolicy,
    err: CredentialError,
    failures: int,
    token_left: float | None,
    rng: random.Random,
) -> float:
    """Seconds until the next call after the ``failures``-th failure in a row, ``err``;
    ``token_left`` is how long the held token is still usable (None when none is held)."""
    first, cap = (
        (policy.config_first, policy.config_max)
        if err.permanent
        else (policy.transient_first, policy.transient_max)
    )
    if token_left is None and not err.permanent:
        cap = min(cap, policy.transient_max_without_token)
    backoff = min(cap, first * 2 ** min(failures - 1, 30))
    delay = rng.uniform(backoff / 2, backoff)
    if token_left is not None:
        # Keep trying while the old token lasts: at least twice before it runs out.
        delay = min(delay, max(policy.min_delay, token_left / 2))
    if err.retry_after is not None:
        delay = max(delay, min(err.retry_after, policy.max_retry_after))
    return delay
