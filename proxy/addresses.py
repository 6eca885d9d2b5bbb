"""Which host names and addresses are loopback. Standard library only."""

from __future__ import annotations

import ipaddress
import re

# RFC 9110 section 7.2 / RFC 3986 section 3.2.2: Host = uri-host [ ":" port ], where uri-host is
# an IP literal in brackets, an IPv4 address or a reg-name. Anything else ("a:1@b", "[::1]x")
# is no host at all, and taking a part of it for the host is how a rebinding check is fooled.
_AUTHORITY = re.compile(
    r"^(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._~!$&'()*+,;=%-]+))(?::[0-9]{0,5})?$"
)


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
    """The host part of a Host header value: ``[::1]:8787`` -> ``::1``, ``a:1`` -> ``a``;
    ``""`` when the value is not a well-formed authority."""
    match = _AUTHORITY.match(authority)
    if match is None:
        return ""
    return match.group("ip6") or match.group("name")
