"""What the emulated data plane does wrong on purpose, so apps can rehearse it: a 429 every Nth
request (with Azure's throttling headers), a 500 every Nth, slow first bytes and slow tokens.
A prompt can ask for the content filter (content_filter.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Fault = Literal["rate_limit", "fail"]


@dataclass(slots=True)
class Faults:
    rate_limit_every: int = 0  # every Nth request gets 429 with Retry-After
    retry_after: float = 2.0  # seconds the 429 asks the client to wait
    fail_every: int = 0  # every Nth request gets 500
    first_token_delay: float = 0.0  # seconds before the first byte of an answer
    token_delay: float = 0.05  # seconds between streamed tokens

    def due(self, count: int) -> Fault | None:
        """The fault the ``count``-th request (from 1) gets, if any."""
        if self.rate_limit_every and count % self.rate_limit_every == 0:
            return "rate_limit"
        if self.fail_every and count % self.fail_every == 0:
            return "fail"
        return None
