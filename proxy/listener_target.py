"""Request targets (RFC 9112 section 3.2), as a part of listener.py's GuardedHttpProtocol.

foundry-proxy serves its own paths: origin-form targets ("/openai/..."), and absolute-form ones
that name this proxy ("http://127.0.0.1:8787/openai/..."), which RFC 9112 section 3.2.2 says a
server must accept and which become origin-form before uvicorn sees them, with the target's
authority as the Host the gate judges. A target naming another server, authority-form
(CONNECT) and asterisk-form are what a forward proxy is sent: refused with
``not_a_forward_proxy`` before a request exists, so that no such target is forwarded or taken
for a path of ours (docs/security.md, A6 and A7).
"""

from __future__ import annotations

import re
from typing import Any

from proxy.addresses import host_of_authority, is_loopback_host

# scheme "://" authority, then the path (which may be empty) and the query.
_ABSOLUTE = re.compile(rb"(https?)://([^/?#]*)((?:[/?].*)?)\Z", re.IGNORECASE | re.DOTALL)


def not_a_forward_proxy(server: Any) -> str:
    """What a client that takes foundry-proxy for a forward proxy is told (``server``: the
    address the connection came in on, uvicorn's ``(host, port)``)."""
    port = server[1] if server and server[1] else "PORT"
    return (
        "foundry-proxy is a reverse proxy, not a forward proxy: it serves its own paths only. "
        f"Point the client's base_url at http://127.0.0.1:{port}/... instead of using "
        "foundry-proxy as its HTTP proxy"
    )


class TargetForms:
    """The request target of the head being parsed; GuardedHttpProtocol sets the state."""

    # The protocol's (uvicorn's HttpToolsProtocol and GuardedHttpProtocol's).
    parser: Any
    server: Any
    url: bytes
    headers: list[tuple[bytes, bytes]]
    _target_refused: bool

    def _to_origin_form(self) -> None:
        """Turn an absolute-form target naming this proxy into origin-form, the target's
        authority replacing the Host header (RFC 9112 section 3.2.2); raise (the parser then
        stops, and the protocol answers 400) for any other target that is not origin-form."""
        target = self.url
        if target.startswith(b"/"):
            return
        if target == b"*" and self.parser.get_method() == b"OPTIONS":
            raise ValueError("OPTIONS * is not served")
        found = _ABSOLUTE.match(target)
        authority = found.group(2) if found else b""
        if found is None or not self._names_us(found.group(1).lower() == b"https", authority):
            self._target_refused = True
            raise ValueError("request target for another server")
        rest = found.group(3)
        self.url = rest if rest.startswith(b"/") else b"/" + rest
        # In place: uvicorn's scope holds this very list. Two Host fields stay two (refused).
        self.headers[:] = [(n, authority if n == b"host" else v) for n, v in self.headers]

    def _names_us(self, https: bool, authority: bytes) -> bool:
        """Whether ``authority`` names the address and port this connection came in on; any
        loopback name will do for that of a loopback address, as in a Host header."""
        text = authority.decode("latin-1")
        host = host_of_authority(text)
        local = self.server
        if not host or not (is_loopback_host(host) or (local and host == str(local[0]))):
            return False
        if not local or local[1] is None:
            return True  # a Unix socket: no port to name
        _, colon, port = ("", "", "") if text.endswith("]") else text.rpartition(":")
        named = int(port) if colon and port else 443 if https else 80
        return bool(named == local[1])
