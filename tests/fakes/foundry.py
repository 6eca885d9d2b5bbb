"""The emulated data plane with test knobs: a journal of every request, steering headers and a
few routes that only tests need (hop-by-hop headers, fixed statuses, a truncated body, a missing
role, and an echo for any other path).

Steering headers: ``x-fake-chunks`` (number of streamed tokens), ``x-fake-delay`` (seconds
between events), ``x-fake-first-delay`` (seconds before the first byte).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.emulator.deployments import Deployments
from proxy.emulator.faults import Faults
from proxy.emulator.foundry import EmulatedFoundry
from proxy.emulator.wire import EmuRequest, Headers, json_reply
from tests.fakes.tokens import RecordingIssuer

_EMULATED = re.compile(
    r"^/openai/(v1/|deployments/[^/]+/)?(chat/completions|embeddings|responses|audio/transcriptions|models)$"
    r"|^/models/(chat/completions|embeddings|info)$"
    r"|^/anthropic/v1/messages(/count_tokens)?$"
)


@dataclass
class Entry:
    method: str
    raw_path: str
    query: str
    headers: list[tuple[str, str]]
    body_len: int
    body_sha256: str
    started: float
    auth: str = "ok"
    token_serial: int | None = None
    first_byte: float | None = None
    ended: float | None = None
    completed: bool = False
    disconnected_at: float | None = None
    events: list[float] = field(default_factory=list)
    written: list[bytes] = field(default_factory=list)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


class FakeFoundry(EmulatedFoundry):
    def __init__(self, issuer: RecordingIssuer) -> None:
        # Any deployment name, no Azure request checks; a test sets ``deployments`` to a
        # catalogue to have the emulator's Azure answers.
        super().__init__(issuer, Faults(token_delay=0.0), Deployments(held=None))
        self.recording = issuer
        self.journal: list[Entry] = []
        self._lock = threading.Lock()
        #: Compress 401 answers when the client accepts gzip (as a CDN in front might).
        self.gzip_401 = False
        #: When set, every request is answered with this (status, body): a missing role,
        #: a firewall, a wrong endpoint.
        #: A callable gets the request (to echo it, as some gateways do); its None lets the
        #: request through.
        self.refuse: (
            tuple[int, dict[str, Any]]
            | Callable[[EmuRequest], tuple[int, dict[str, Any]] | None]
            | None
        ) = None

    def entries(self, path_part: str = "") -> list[Entry]:
        with self._lock:
            return [e for e in self.journal if path_part in e.raw_path]

    async def serve(self, request: EmuRequest, receive: Any, send: Any) -> None:
        entry = Entry(
            request.method,
            request.path,
            request.query,
            request.headers,
            len(request.body),
            hashlib.sha256(request.body).hexdigest(),
            time.monotonic(),
        )
        request.extra["entry"] = entry
        auth = [v for k, v in request.headers if k == "authorization"]
        if len(auth) == 1:
            entry.token_serial = self.recording.serial(auth[0].removeprefix("Bearer "))
        with self._lock:
            self.journal.append(entry)
        refusal = self.refuse(request) if callable(self.refuse) else self.refuse
        if refusal is not None:
            await self.reply(send, request, *json_reply(*refusal))
            return
        first = request.header("x-fake-first-delay")
        if first and not _EMULATED.match(request.path):
            await asyncio.sleep(float(first))
        await super().serve(request, receive, send)

    def authorize(self, request: EmuRequest) -> dict[str, Any] | None:
        refusal = super().authorize(request)
        request.extra["entry"].auth = request.extra.get(
            "auth", "missing or malformed authorization"
        )
        return refusal

    def stream_timing(self, request: EmuRequest) -> tuple[float, float]:
        first = float(request.header("x-fake-first-delay") or 0)
        return first, float(request.header("x-fake-delay") or 0.05)

    def on_event(self, request: EmuRequest, data: bytes) -> None:
        entry: Entry = request.extra["entry"]
        if not data:
            entry.first_byte = time.monotonic()
        else:
            entry.events.append(time.monotonic())
            entry.written.append(data)

    def on_complete(self, request: EmuRequest) -> None:
        entry: Entry = request.extra["entry"]
        entry.completed = True
        entry.ended = time.monotonic()

    def on_disconnect(self, request: EmuRequest) -> None:
        entry: Entry = request.extra["entry"]
        entry.disconnected_at = time.monotonic()
        entry.ended = time.monotonic()

    async def reply(
        self, send: Any, request: EmuRequest, status: int, headers: Headers, body: bytes
    ) -> None:
        entry: Entry = request.extra["entry"]
        entry.first_byte = time.monotonic()
        await super().reply(send, request, status, headers, body)
        entry.ended = time.monotonic()
        entry.completed = True

    def answer_for(self, request: EmuRequest, model: str, prompt: str) -> str:
        if chunks := request.header("x-fake-chunks"):
            # Exactly N streamed tokens: "tok0 ", "tok1 ", ..., "tokN-1".
            return " ".join(f"tok{i}" for i in range(int(chunks)))
        return super().answer_for(request, model, prompt)

    async def route(self, request: EmuRequest, receive: Any, send: Any) -> None:
        path = request.path
        if path.endswith("/hop-headers"):
            await self.reply(
                send,
                request,
                200,
                [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"2"),
                    (b"connection", b"x-secret-hop"),
                    (b"x-secret-hop", b"1"),
                    (b"keep-alive", b"timeout=5"),
                    (b"proxy-authenticate", b"Basic"),
                    (b"set-cookie", b"session=abc"),
                    (b"alt-svc", b'h3=":443"'),
                    (b"retry-after", b"7"),
                    (b"retry-after-ms", b"7000"),
                    (b"x-ratelimit-remaining-requests", b"42"),
                    (b"apim-request-id", b"apim-hop"),
                    (b"x-request-id", b"req-hop"),
                    (b"x-ms-region", b"Sweden Central"),
                ],
                b"{}",
            )
        elif path.endswith("/redirect"):
            target = request.query.removeprefix("to=").encode()
            await self.reply(
                send, request, 307, [(b"location", target), (b"content-length", b"0")], b""
            )
        elif path.endswith("/denied"):
            denied = {
                "error": {
                    "code": "PermissionDenied",
                    "message": "The principal lacks the required data action.",
                }
            }
            await self.reply(send, request, *json_reply(401, denied))
        elif m := re.search(r"/status/(\d{3})$", path):
            await self.reply(
                send,
                request,
                *json_reply(
                    int(m.group(1)),
                    {"error": {"code": m.group(1), "message": "as asked"}},
                    [(b"retry-after", b"3"), (b"x-ratelimit-remaining-requests", b"0")],
                ),
            )
        elif path.endswith("/truncated-401"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-length", b"100")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"statusCode"', "more_body": True})
            raise ConnectionAbortedError("fake upstream cuts the 401 short on purpose")
        elif path.endswith("/truncated"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"1000")],
                }
            )
            await send({"type": "http.response.body", "body": b"x" * 600, "more_body": True})
            raise ConnectionAbortedError("fake upstream cuts the body short on purpose")
        elif _EMULATED.match(path):
            await super().route(request, receive, send)
        else:
            echo = {"method": request.method, "path": path, "query": request.query}
            await self.reply(send, request, *json_reply(200, echo))
