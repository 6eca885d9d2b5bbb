from __future__ import annotations

import pytest

from proxy.addresses import host_of_authority, is_loopback_host


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("localhost:8787", "localhost"),
        ("[::1]:8787", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        (":8787", ""),
        # Not authorities at all (RFC 3986 section 3.2.2): an IPv6 host needs brackets, and
        # nothing may follow the port or the bracket (docs/security.md, B23).
        ("::1", ""),
        ("127.0.0.1:8787@evil.example", ""),
        ("[::1]evil.example", ""),
        ("127.0.0.1 evil", ""),
    ],
)
def test_host_of_authority(authority: str, host: str) -> None:
    assert host_of_authority(authority) == host


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST.", "app.localhost", "127.0.0.1", "127.9.8.7", "::1", "[::1]"]
)
def test_loopback(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    ["", "evil.example", "127.0.0.1.evil.com", "localhost.evil", "10.0.0.1", "0.0.0.0", "::"],
)
def test_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)
