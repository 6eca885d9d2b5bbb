"""The usage inspector on an answer's way out: what metrics and the access log read of it.

It copies, never holds back: the client gets every byte as the upstream sent it, and parsing
waits until the answer has gone out.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.types import Message, Send

from proxy.exchange import Exchange
from proxy.usage import (
    JSON_HEAD,
    JSON_TAIL,
    STREAM_HEAD,
    STREAM_TAIL,
    from_anthropic_stream,
    from_json,
    from_stream_tail,
    model_of_request,
)

if TYPE_CHECKING:
    from proxy.metrics import Metrics


class UsageTap:
    """Sits on ``send``: notes status, timing, sizes and ids for an Exchange, and keeps a copy
    of what usage can be read from (a JSON body's head and tail, or a stream's) without
    delaying or changing a byte. Parsing happens in finish(), after the answer has gone out.

    When the answer does not name the model (a stream without usage, an error, audio), the
    model is the one the request body names, if the body was small enough to be kept whole
    for replay (see usage.model_of_request)."""

    __slots__ = (
        "_head",
        "_json",
        "_kept",
        "_metrics",
        "_send",
        "_stream",
        "_tail",
        "_tail_size",
        "_wants_model",
        "request_body",
        "x",
    )

    def __init__(self, x: Exchange, send: Send, metrics: Metrics | None, wants_model: bool) -> None:
        self.x = x
        self._send = send
        self._metrics = metrics
        self._wants_model = wants_model  # metrics or the access log will read x.model
        self._kept = bytearray()  # a JSON answer's bytes (bounded as usage.from_json reads them)
        # A stream's last chunks, as the upstream sent them: references, not copies. A
        # bytearray trimmed from the front keeps its whole allocation, ~9 KiB a stream; the
        # chunks themselves are ~4-5 KiB: 1,000 slow streams peaked at 97.8 MB, not 103.4
        # (bench, same run). A list, not a deque: an empty deque is 624 bytes (one 64-slot
        # block), a list 56, on every request; _keep_tail trims it from the front, which is a
        # move of at most a few hundred pointers since the chunks it holds add up to only
        # STREAM_TAIL bytes.
        self._tail: list[bytes] = []
        self._tail_size = 0
        self._head: bytearray | None = None  # a Claude stream's first bytes (message_start)
        self._json = self._stream = False
        self.request_body: bytes | None = None

    async def send(self, message: Message) -> None:
        x = self.x
        if message["type"] == "http.response.start":
            x.status = message["status"]
            x.first_byte = time.perf_counter()
            self._inspect(message["headers"])
        else:
            body = message.get("body", b"")
            x.bytes_out += len(body)
            if self._stream:
                head = self._head
                if head is not None and len(head) < STREAM_HEAD:
                    head += body[: STREAM_HEAD - len(head)]
                if body:
                    self._keep_tail(body)
            elif self._json:
                # Whole while small; past that a bounded head and tail (usage.from_json).
                self._kept += body
                if self._head is not None:
                    if len(self._kept) > 2 * JSON_TAIL:
                        del self._kept[:-JSON_TAIL]
                elif len(self._kept) > JSON_HEAD + 2 * JSON_TAIL:
                    self._head = self._kept[:JSON_HEAD]
                    del self._kept[:-JSON_TAIL]
        await self._send(message)

    def _keep_tail(self, body: bytes) -> None:
        """Keep the fewest last chunks that hold STREAM_TAIL bytes (one chunk larger than that
        is cut to its last STREAM_TAIL bytes)."""
        if len(body) > STREAM_TAIL:
            body = body[-STREAM_TAIL:]
        tail = self._tail
        tail.append(body)
        self._tail_size += len(body)
        while self._tail_size - len(tail[0]) >= STREAM_TAIL:
            self._tail_size -= len(tail.pop(0))

    def _inspect(self, headers: list[tuple[bytes, bytes]]) -> None:
        x = self.x
        for name, value in headers:
            if name == b"content-type":
                if value.startswith(b"text/event-stream"):
                    x.streamed = self._stream = True
                    if x.route == "anthropic":
                        self._head = bytearray()
                    if self._metrics is not None:
                        self._metrics.streams.inc()
                else:
                    self._json = value.startswith(b"application/json") and x.status == 200
            elif name == b"apim-request-id":
                x.apim_request_id = value.decode("latin-1")
            elif name.startswith(b"x-ratelimit-remaining-"):
                if x.ratelimit is None:
                    x.ratelimit = {}
                x.ratelimit[name[22:].decode("latin-1")] = value.decode("latin-1")

    def finish(self) -> None:
        if self._stream:
            if self._metrics is not None:
                self._metrics.streams.dec()
            kept = b"".join(self._tail)
            self._tail.clear()
            if self._head is not None:
                self.x.usage = from_anthropic_stream(bytes(self._head), kept)
                self._head = None
            else:
                self.x.usage = from_stream_tail(kept)
        elif self._json and self._kept:
            head = None if self._head is None else bytes(self._head)
            self.x.usage = from_json(bytes(self._kept), head)
            self._head = None
        self._kept = bytearray()
        if self.request_body is not None:
            if self._wants_model and not self.x.model:
                # On the /v1 routes the body's model is the deployment, as the path's is on
                # /openai/deployments/{deployment}/...
                self.x.deployment = model_of_request(self.request_body)
            self.request_body = None
