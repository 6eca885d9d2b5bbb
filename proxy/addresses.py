"""Which host names and addresses are loopback. Standard library only."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` (and ``*.localhost``, RFC 6761) and 127.0.0.0/8 or ``::1``."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of_authority(authority: str) -> str:
    """The host part of a Host header value: ``[::1]:8787`` -> ``::1``, ``a:1`` -> ``a``."""
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority
