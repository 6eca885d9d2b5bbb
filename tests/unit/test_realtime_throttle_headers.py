"""Which headers of an upstream's throttled handshake reach the client, and their bounds."""

from __future__ import annotations

from multidict import CIMultiDict

from proxy.realtime import throttle_headers


def test_retry_headers_are_kept_and_others_dropped() -> None:
    got = throttle_headers(
        CIMultiDict(
            [
                ("Retry-After", "7"),
                ("Retry-After-Ms", "7000"),
                ("x-ms-retry-after-ms", "7000"),
                ("X-RateLimit-Reset-Tokens", "6m0s"),
                ("Content-Type", "application/json"),
                ("apim-request-id", "abc"),
                ("Set-Cookie", "a=b"),
            ]
        )
    )
    assert got == (
        (b"retry-after", b"7"),
        (b"retry-after-ms", b"7000"),
        (b"x-ms-retry-after-ms", b"7000"),
        (b"x-ratelimit-reset-tokens", b"6m0s"),
    )


def test_odd_values_are_left_out() -> None:
    got = throttle_headers(
        CIMultiDict(
            [
                ("retry-after", "7\u00e9"),
                ("retry-after-ms", "1" * 129),
                ("x-ratelimit-limit-requests", "a\tb"),
                ("x-ratelimit-\u00e9", "1"),
                ("x-ratelimit-remaining-requests", "1" * 128),
            ]
        )
    )
    assert got == ((b"x-ratelimit-remaining-requests", b"1" * 128),)


def test_at_most_sixteen_are_copied() -> None:
    got = throttle_headers(CIMultiDict((f"x-ratelimit-n{i}", str(i)) for i in range(40)))
    assert [name for name, _ in got] == [f"x-ratelimit-n{i}".encode() for i in range(16)]
