"""One backend's health: its cooldown after a 429 or a failure, and its circuit breaker.

Pure and passive: the state changes only by what real requests met, never by a call of its
own (a synthetic call would spend quota and tokens). Time is the monotonic clock the pool is
given, so tests drive it by hand (docs/backends.md).

- **Cooldown.** A 429 or a failure keeps the backend out of rotation for as long as the
  upstream asked (``retry-after-ms``, ``retry-after`` in seconds or as an HTTP date,
  ``x-ratelimit-reset-requests`` / ``-tokens``), capped at MAX_COOLDOWN; without such a header,
  for a backoff that doubles with each consecutive failure.
- **Circuit breaker.** ``failures_to_open`` consecutive failures (5xx, connect errors,
  timeouts; a 429 is the upstream working as designed and does not count) open the circuit for
  ``open_seconds``. Then exactly one request is let through as the probe: its success closes
  the circuit, its failure opens it again; meanwhile other requests go elsewhere.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Callable, Mapping
from typing import Literal

Clock = Callable[[], float]
State = Literal["closed", "open", "half_open"]

#: The longest cooldown honoured: a daily quota's reset hours away must not take a backend out
#: of rotation for hours when the quota may be raised or another deployment answer sooner.
MAX_COOLDOWN = 300.0
#: The shortest: an upstream asking for 0 s is not asked again within the same instant.
MIN_COOLDOWN = 0.1
#: Backoff after a failure without a Retry-After: 1 s, doubling to at most 60 s.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
# x-ratelimit-reset-* durations as OpenAI writes them ("1s", "6m0s", "250ms", "1h2m3.5s"),
# or a plain number of seconds.
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?$")
_MS = re.compile(r"^(\d+(?:\.\d+)?)ms$")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def reset_seconds(text: str) -> float | None:
    """An ``x-ratelimit-reset-*`` value in seconds: "20ms", "1s", "6m0s", "1h2m3s" or "12"."""
    text = text.strip().lower()
    if not text:
        return None
    plain = _number(text)
    if plain is not None:
        return plain
    if m := _MS.match(text):
        return float(m.group(1)) / 1000
    m = _DURATION.match(text)
    if m is None or not any(m.groups()):
        return None
    hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    return hours * 3600 + minutes * 60 + seconds


def retry_after(headers: Mapping[str, str], wall_now: float) -> float | None:
    """Seconds the upstream asked to wait, from its answer's headers (names looked up in lower
    case; aiohttp's headers ignore case): ``retry-after-ms`` (and ``x-ms-retry-after-ms``),
    then ``retry-after`` (seconds or an HTTP date, RFC 9110 section 10.2.3), then the
    ``x-ratelimit-reset-*`` of the limit that ran out (the later of the two when neither says).
    None when none of them is there or readable."""
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value is not None and (ms := _number(value.strip())) is not None:
            return ms / 1000
    value = headers.get("retry-after")
    if value is not None:
        seconds = _number(value.strip())
        if seconds is not None:
            return seconds
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - wall_now)
    resets: list[float] = []
    for kind in ("requests", "tokens"):
        raw = headers.get(f"x-ratelimit-reset-{kind}")
        seconds = reset_seconds(raw) if raw is not None else None
        if seconds is None:
            continue
        if (headers.get(f"x-ratelimit-remaining-{kind}") or "").strip() == "0":
            return seconds
        resets.append(seconds)
    return max(resets) if resets else None


class Health:
    """Cooldown and circuit state of one backend (see the module's docstring)."""

    __slots__ = (
        "_clock",
        "cool_until",
        "failures",
        "failures_to_open",
        "open_seconds",
        "open_until",
        "probing",
        "state",
    )

    def __init__(self, clock: Clock, failures_to_open: int, open_seconds: float) -> None:
        self._clock = clock
        self.failures_to_open = failures_to_open
        self.open_seconds = open_seconds
        self.cool_until = 0.0
        self.failures = 0  # consecutive failures (5xx, connect errors, timeouts)
        self.state: State = "closed"
        self.open_until = 0.0
        self.probing = False  # the one request trying a half-open circuit is under way

    def _settle(self, now: float) -> None:
        if self.state == "open" and now >= self.open_until:
            self.state = "half_open"

    def available(self) -> bool:
        """Whether a request may go here now (without taking the probe)."""
        now = self._clock()
        self._settle(now)
        if self.state == "open" or now < self.cool_until:
            return False
        return not (self.state == "half_open" and self.probing)

    def take(self) -> bool:
        """Claim this backend for one request: False when it cannot take one now; the probe
        of a half-open circuit is claimed by exactly one request."""
        if not self.available():
            return False
        if self.state == "half_open":
            self.probing = True
        return True

    def succeeded(self) -> None:
        self.failures = 0
        self.state = "closed"
        self.probing = False

    def throttled(self, wait: float | None) -> None:
        """A 429: out of rotation for ``wait`` (capped), else for the first backoff step. The
        circuit is left as it is (a half-open one gets its probe back)."""
        self._cool(BACKOFF_FIRST if wait is None else wait)
        self.probing = False

    def failed(self, wait: float | None) -> None:
        """A 5xx, a connect error or a timeout: cooled down (``wait``, else a backoff doubling
        with each consecutive failure), and counted towards opening the circuit."""
        self.failures += 1
        backoff = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(self.failures - 1, 16))
        self._cool(backoff if wait is None else wait)
        if self.state == "half_open" or self.failures >= self.failures_to_open:
            self.state = "open"
            self.open_until = self._clock() + self.open_seconds
        self.probing = False

    def abandoned(self) -> None:
        """The request claimed this backend but ended with no verdict on it (the client left,
        or the body could not be sent): a probe it held is freed for the next request."""
        self.probing = False

    def _cool(self, seconds: float) -> None:
        seconds = min(MAX_COOLDOWN, max(MIN_COOLDOWN, seconds))
        self.cool_until = max(self.cool_until, self._clock() + seconds)

    def ready_in(self) -> float:
        """Seconds until this backend can take a request again (0 when it can now)."""
        now = self._clock()
        self._settle(now)
        until = self.cool_until
        if self.state == "open":
            until = max(until, self.open_until)
        return max(0.0, until - now)

    def label(self) -> str:
        """closed, cooling_down, open or half_open: for /metrics and /readyz."""
        now = self._clock()
        self._settle(now)
        if self.state == "closed" and now < self.cool_until:
            return "cooling_down"
        return self.state
