"""The listener's limits (docs/security.md, "Resource bounds"), from the settings, and the
rate-limited warnings it logs when one bites. listener.py, listener_pipeline.py and
listener_deadlines.py enforce them on HTTP/1.1 connections, websocket_listener.py on Realtime
sessions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.settings import Settings

log = logging.getLogger("foundry_proxy")

# The scope key under which the listener leaves the status it answered a request with itself
# while the app had the request (a body too slow, a bad chunk, the body budget spent): the app
# never started that response, and records this status for it (access log, metrics).
ANSWERED_KEY = "foundry_proxy.listener_answered"


def cancelled(timer: asyncio.TimerHandle | None) -> asyncio.TimerHandle | None:
    """Cancel ``timer`` if one is set; None, for the attribute that held it."""
    if timer is not None:
        timer.cancel()
    return None


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


class SendDeadline:
    """The send deadline of both listeners' connections (FOUNDRY_PROXY_SEND_TIMEOUT): a client
    that takes nothing of what is sent to it for ``send_timeout`` seconds is cut off, which
    ends its request or session. The protocol calls ``_start_send_check`` when its transport
    pauses writing and ``_stop_send_check`` when it resumes or the connection is lost."""

    # The protocol's.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    limits: ListenerLimits
    # This part's own (set by the protocol's __init__).
    _send_timer: asyncio.TimerHandle | None
    _send_left: int  # bytes the client had not taken at the last check
    # The warning logged when a client is cut off: its kind and its text (given send_timeout).
    _send_notice: tuple[str, str]

    @abstractmethod
    def _send_blocked(self) -> bool:
        """Whether the answer is still waiting for the client to take it (each protocol says)."""

    def _took_some(self, left: int) -> bool:
        """Whether the client took some of the answer since the last check: slow, not gone."""
        return left < self._send_left

    def _start_send_check(self) -> None:
        if self._send_timer is None:
            self._send_left = self.transport.get_write_buffer_size()
            self._send_timer = self.loop.call_later(self.limits.send_timeout, self._send_check)

    def _stop_send_check(self) -> None:
        self._send_timer = cancelled(self._send_timer)

    def _send_check(self) -> None:
        self._send_timer = None
        if not self._send_blocked():
            return
        left = self.transport.get_write_buffer_size()
        if self._took_some(left):
            self._send_left = left
            self._send_timer = self.loop.call_later(self.limits.send_timeout, self._send_check)
            return
        kind, message = self._send_notice
        self.limits.notices.warn(kind, message, self.limits.send_timeout)
        # The protocol's connection_lost tells the request or session, which closes its
        # upstream side.
        self.transport.abort()
