"""The WebSocket listener: uvicorn's WebSocket protocol (websockets' sans-I/O implementation)
with the bounds the Realtime relay needs (docs/security.md, "Resource bounds").

- A client message is read only when the relay asks for the next one, which it does once the
  previous one is on its way upstream. uvicorn read the next message as soon as the relay took
  one, so each session held a message in hand and another behind it.
- The bytes of client messages held in memory (being parsed, waiting for the relay, or being
  written upstream) come out of the process's buffer budget (budget.py,
  FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES), shared with request bodies. A session whose message
  finds the budget spent is closed with 1013 (try again later): its bytes are in memory by
  then, so waiting for room would hold them outside the budget.
- A client that takes nothing of what is sent to it for FOUNDRY_PROXY_SEND_TIMEOUT seconds is
  cut off: uvicorn waits for the socket to drain before each send, without a deadline, and a
  close would wait for the same drain.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from proxy.budget import BUDGET_KEY, BodyBudget, HeldBody
from proxy.listener_limits import ListenerLimits, SendDeadline

# A message being written upstream is held three times over: as the relay has it, as aiohttp
# masks a copy of it (RFC 6455 section 5.3) and as the upstream socket's buffer has what is not
# sent yet (measured: a 16 MiB message to an upstream that reads nothing costs ~50 MiB of RSS).
_IN_HAND_COPIES = 3
# A frame's payload is held in the parser's buffer as it arrives, and copied out of it whole
# when the frame is complete.
_PARSE_COPIES = 2
# How long a session closed for want of budget may take to read its close frame.
_CLOSE_GRACE = 1.0


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol, SendDeadline):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = ListenerLimits.of(config)
        budget = app_state.get(BUDGET_KEY)
        self._held = HeldBody(budget) if isinstance(budget, BodyBudget) else None
        self._queued: list[int] = []  # sizes of messages waiting for the relay
        self._in_hand = 0  # size of the message the relay took last
        self._send_timer: asyncio.TimerHandle | None = None
        self._send_left = 0

    # -- reading, one message at a time, within the budget ---------------------------------------

    async def receive(self) -> Any:
        # The relay asks for a message once the one before is on its way: that one is no longer
        # held, and only now may the next be read.
        self._in_hand = 0
        self._account()
        if self.read_paused and self.queue.empty() and not self.close_sent:
            self.read_paused = False
            self.transport.resume_reading()
        message = await self.queue.get()
        if message["type"] == "websocket.receive" and self._queued:
            self._in_hand = self._queued.pop(0)
            self._account()
        return message

    def send_receive_event_to_app(self) -> None:
        size = sum(len(frame) for frame in self.frames)
        waiting = self.queue.qsize()
        super().send_receive_event_to_app()
        if self.queue.qsize() > waiting:
            self._queued.append(size)
        # uvicorn resumed reading from receive(), after the relay took the message; now the
        # relay's next receive() does.

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.handshake_complete:
            self._account()

    def _account(self) -> None:
        """Bring the budget's count to the bytes this connection holds now; close the session
        when the budget cannot cover them."""
        held = self._held
        if held is None:
            return
        now = (
            _PARSE_COPIES * len(self.conn.reader.buffer)
            + sum(len(frame) for frame in self.frames)
            + sum(self._queued)
            + _IN_HAND_COPIES * self._in_hand
        )
        if now < held.size:
            held.drop(held.size - now)
        elif now > held.size and not held.add(now - held.size):
            self._refuse_for_budget()

    def _refuse_for_budget(self) -> None:
        self.limits.notices.warn(
            "ws-budget",
            "a Realtime session was closed (1013): its message did not fit in the buffer "
            "budget (FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES)",
        )
        if self.close_sent:  # closing already, and still sending: nothing left to say
            self.transport.abort()
            return
        self.conn.fail(1013, "the proxy's buffer budget is spent; try again later")
        self.transport.write(b"".join(self.conn.data_to_send()))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1013, "reason": ""})
        # Failed, the parser discards what comes (RFC 6455 section 7.1.7), which is read on so
        # that no reset destroys the close frame before the client reads it; then the
        # connection is dropped, whoever still sends or does not read.
        if self._held is not None:
            self._held.close()
            self._held = None
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.loop.call_later(_CLOSE_GRACE, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_send_check()
        if self._held is not None:
            self._held.close()
        self._queued.clear()
        self._in_hand = 0
        super().connection_lost(exc)

    # -- the send deadline -----------------------------------------------------------------------

    # A client cut off: connection_lost tells the relay (its send() raises), which closes the
    # upstream.
    _send_notice = (
        "ws-send",
        "a Realtime client read nothing for %g s: its session was ended "
        "(FOUNDRY_PROXY_SEND_TIMEOUT)",
    )

    def pause_writing(self) -> None:
        super().pause_writing()
        self._start_send_check()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_send_check()

    def _send_blocked(self) -> bool:
        return not self.writable.is_set()

    def _took_some(self, left: int) -> bool:
        return 0 < left < self._send_left
