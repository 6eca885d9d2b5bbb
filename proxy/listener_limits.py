"""The listener's limits (docs/security.md, "Resource bounds"), from the settings, and the
rate-limited warnings it logs when one bites. listener.py, listener_pipeline.py and
listener_deadlines.py enforce them on HTTP/1.1 connections, websocket_listener.py on Realtime
sessions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.settings import Settings

log = logging.getLogger("foundry_proxy")

# The scope key under which the listener leaves the status it answered a request with itself
# while the app had the request (a body too slow, a bad chunk, the body budget spent): the app
# never started that response, and records this status for it (access log, metrics).
ANSWERED_KEY = "foundry_proxy.listener_answered"


class Notices:
    """Warnings about limits that bite, at most one line per kind every ``every`` seconds (with
    the count of those left out): an attack must not turn into a flood of log lines."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.every:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return
        self._last[kind] = now
        left_out = self._left_out.pop(kind, 0)
        if left_out:
            message += f" ({left_out} more since the last such line)"
        log.warning(message, *args)


@dataclass(frozen=True)
class ListenerLimits:
    """The listener's bounds (docs/security.md, "Resource bounds"); defaults as in settings."""

    head_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 2048
    max_pipelined: int = 8
    body_timeout: float = 20.0
    body_min_rate: int = 500
    send_timeout: float = 30.0
    notices: Notices = field(default_factory=Notices, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> ListenerLimits:
        return cls(
            head_timeout=settings.head_timeout,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
            max_pipelined=settings.max_pipelined,
            body_timeout=settings.body_timeout,
            body_min_rate=settings.body_min_rate,
            send_timeout=settings.send_timeout,
        )

    @classmethod
    def of(cls, config: object) -> ListenerLimits:
        """The limits a server was configured with (``config.limits``); without them, the
        defaults with the head limits ProxyConfig carries."""
        limits = getattr(config, "limits", None)
        if isinstance(limits, ListenerLimits):
            return limits
        limits = cls(
            head_timeout=getattr(config, "head_timeout", cls.head_timeout),
            max_header_bytes=getattr(config, "max_header_bytes", cls.max_header_bytes),
        )
        return limits.apply_to(config)  # one Notices per server, not per connection

    def apply_to(self, config: object) -> ListenerLimits:
        """Make these the limits of the servers ``config`` configures (it pickles with them
        for the worker processes of ``--workers``)."""
        config.limits = self  # type: ignore[attr-defined]
        return self
