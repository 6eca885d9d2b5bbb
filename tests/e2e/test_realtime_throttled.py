"""A Realtime handshake when every backend is rate limited: the client is told when to come
back, by the last backend's own answer and then by the pool's cooldown (docs/backends.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.e2e.realtime_pair import realtime_pair

pytestmark = pytest.mark.e2e


def denied(url: str) -> Any:
    with pytest.raises(InvalidStatus) as caught, connect(url, open_timeout=5, close_timeout=2):
        pass
    return caught.value.response


def test_both_backends_throttle_the_handshake() -> None:
    with realtime_pair() as (primary, secondary, url):
        primary.refuse_status = secondary.refuse_status = 429
        primary.refusal_headers = [("Retry-After", "5"), ("x-ratelimit-remaining-tokens", "0")]
        secondary.refusal_headers = [("Retry-After", "7"), ("retry-after-ms", "7000")]

        first = denied(url)
        # Both were asked, in priority order; the client gets the last one's answer.
        assert (primary.count(), secondary.count()) == (1, 1)
        assert first.status_code == 429
        assert first.headers["retry-after"] == "7"
        assert first.headers["retry-after-ms"] == "7000"
        assert "x-ratelimit-remaining-tokens" not in first.headers
        assert json.loads(first.body)["error"]["code"] == "upstream_refused"

        # Both cool down now: the next handshake is answered by the proxy, upstream untouched,
        # with the sooner of the two waits (5 s, less the time gone since).
        second = denied(url)
        assert (primary.count(), secondary.count()) == (1, 1)
        assert second.status_code == 429
        assert json.loads(second.body)["error"]["code"] == "all_backends_cooling_down"
        wait = int(second.headers["retry-after"])
        assert wait in range(1, 6)
