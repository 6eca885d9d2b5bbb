"""A fake Realtime API upstream (WebSocket) with a session journal and test knobs.

A raw ASGI app serving ``/openai/v1/realtime``, ``/openai/realtime`` (the dated route) and
``/api/projects/{p}/openai/v1/realtime``. Like the real service it checks the bearer token at
the handshake (a 401 denial response with a JSON body when the server supports the ASGI
``websocket.http.response`` extension, as uvicorn does; else a close with 1008), accepts with
the first subprotocol offered, and sends ``session.created`` first. Then it answers:

* ``session.update`` -> ``session.updated``; ``conversation.item.create`` ->
  ``conversation.item.created``; ``response.create`` -> ``response.created``, a few
  ``response.output_text.delta`` and ``response.done`` (shapes the openai SDK parses);
* ``{"type": "test.close", "code": 4001, "reason": "bye"}`` -> closes with that code and reason;
* ``{"type": "test.burst", "count": 50, "size": 1048576}`` -> sends ``count`` binary messages
  of ``size`` bytes as fast as the connection takes them (backpressure tests);
* any other text message -> the same text back, unchanged; a binary message -> the same bytes.

Knobs: ``refuse_status`` (refuse every handshake with this HTTP status while set),
``refusal_headers`` (the headers such a refusal carries besides its content headers; by
default a 429 carries ``retry-after: 2``),
``redirect`` ((status, location): answer every handshake with that redirect while set),
``close_after_connect`` ((code, reason): close right after ``session.created``),
``stop_reading`` (after ``session.created``, read nothing more while set: a peer that stopped
reading, so TCP pushes back on the relay), ``choose_subprotocol`` (which of the offered
subprotocols to accept).

Use ``one_origin(foundry, realtime)`` to serve it on the same origin as the FakeFoundry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.emulator.foundry import AI, COGNITIVE, ENTRA_401_MESSAGE
from tests.fakes.tokens import RecordingIssuer

_ROUTE = re.compile(
    r"^(/openai/v1/realtime|/openai/realtime|/api/projects/[^/]+/openai/v1/realtime)$"
)

_REFUSALS = {
    401: ("401", ENTRA_401_MESSAGE),
    403: ("PermissionDenied", "The principal lacks the required data action."),
    404: ("DeploymentNotFound", "The API deployment for this resource does not exist."),
    429: ("429", "Requests to the Realtime API have exceeded the rate limit."),
}


@dataclass
class Received:
    kind: str  # "text" | "binary"
    data: str | bytes
    at: float  # time.monotonic()


@dataclass
class RealtimeSession:
    """One handshake, as the fake upstream saw it, and what happened on it."""

    path: str
    query: str
    headers: list[tuple[str, str]]
    subprotocols: list[str]
    started: float
    auth: str = "missing"
    token: str | None = None
    token_serial: int | None = None
    #: 101 when accepted, else the refusal status.
    status: int = 0
    subprotocol: str | None = None
    received: list[Received] = field(default_factory=list)
    sent: int = 0
    sent_bytes: int = 0
    #: "peer" when the other side closed first (close_code/close_reason are what it sent),
    #: "fake" when this fake closed first (close_code/close_reason are what it sent).
    closed_by: str | None = None
    close_code: int | None = None
    close_reason: str = ""
    closed_at: float | None = None
    ended: float | None = None

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    @property
    def texts(self) -> list[str]:
        return [r.data for r in self.received if isinstance(r.data, str)]

    @property
    def binaries(self) -> list[bytes]:
        return [r.data for r in self.received if isinstance(r.data, bytes)]


def _event_id() -> str:
    return "event_" + uuid.uuid4().hex[:20]


class FakeRealtime:
    def __init__(self, issuer: RecordingIssuer) -> None:
        self.issuer = issuer
        self.sessions: list[RealtimeSession] = []
        self._lock = threading.Lock()
        self.refuse_status: int | None = None
        self.refusal_headers: list[tuple[str, str]] | None = None
        self.redirect: tuple[int, str] | None = None
        self.stop_reading = False
        self.close_after_connect: tuple[int, str] | None = None
        self.choose_subprotocol: Callable[[list[str]], str | None] = lambda offered: (
            offered[0] if offered else None
        )
        self.deltas = ("Hello", " from", " the fake", " realtime.")

    # -- journal ----------------------------------------------------------------------------

    def session(self, index: int, timeout: float = 5.0) -> RealtimeSession:
        """The ``index``-th session (0-based), waiting up to ``timeout`` for it to start."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.sessions) > index:
                    return self.sessions[index]
            if time.monotonic() > deadline:
                raise AssertionError(f"the fake realtime upstream never saw session #{index}")
            time.sleep(0.01)

    def count(self) -> int:
        with self._lock:
            return len(self.sessions)

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            body = b'{"error":{"code":"404","message":"websocket only"}}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "websocket":
            return
        if (await receive())["type"] != "websocket.connect":
            return
        session = RealtimeSession(
            scope["path"],
            scope["query_string"].decode("latin-1"),
            [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]],
            list(scope.get("subprotocols") or []),
            time.monotonic(),
        )
        with self._lock:
            self.sessions.append(session)
        self._authenticate(session)
        if self.redirect is not None:
            session.status = self.redirect[0]
            await self._redirect(scope, send, *self.redirect)
            session.ended = time.monotonic()
            return
        status = self._refusal(session)
        if status:
            session.status = status
            await self._deny(scope, send, status)
            session.ended = time.monotonic()
            return
        session.status = 101
        session.subprotocol = self.choose_subprotocol(session.subprotocols)
        await send({"type": "websocket.accept", "subprotocol": session.subprotocol})
        tasks: set[asyncio.Task[None]] = set()
        try:
            await self._send_json(send, session, self._session_created(session))
            if self.close_after_connect is not None:
                await self._close(send, session, *self.close_after_connect)
            while self.stop_reading:
                await asyncio.sleep(0.05)
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    if session.closed_by is None:
                        session.closed_by = "peer"
                        session.close_code = message.get("code", 1005)
                        session.close_reason = message.get("reason") or ""
                        session.closed_at = time.monotonic()
                    return
                if message.get("bytes") is not None:
                    data: bytes = message["bytes"]
                    session.received.append(Received("binary", data, time.monotonic()))
                    await self._send(send, session, {"type": "websocket.send", "bytes": data})
                elif message.get("text") is not None:
                    text: str = message["text"]
                    session.received.append(Received("text", text, time.monotonic()))
                    await self._on_text(send, session, text, tasks)
        finally:
            for task in tasks:
                task.cancel()
            session.ended = time.monotonic()

    # -- handshake --------------------------------------------------------------------------

    def _authenticate(self, session: RealtimeSession) -> None:
        auth = session.header("authorization")
        if len(auth) != 1 or not auth[0].startswith("Bearer "):
            session.auth = "missing or malformed authorization"
            return
        token = auth[0].removeprefix("Bearer ")
        session.token = token
        session.token_serial = self.issuer.serial(token)
        audiences = (AI,) if session.path.startswith("/api/projects/") else (COGNITIVE, AI)
        session.auth = self.issuer.verify(token, audiences) or "ok"

    def _refusal(self, session: RealtimeSession) -> int:
        if self.refuse_status is not None:
            return self.refuse_status
        if not _ROUTE.match(session.path):
            return 404
        if session.auth != "ok":
            return 401
        return 0

    async def _deny(self, scope: Scope, send: Send, status: int) -> None:
        code, message = _REFUSALS.get(status, (str(status), "refused by the fake"))
        if status == 401 and code == "401":
            payload: dict[str, Any] = {"statusCode": 401, "message": message}
        else:
            payload = {"error": {"code": code, "message": message}}
        if "websocket.http.response" in scope.get("extensions", {}):
            body = json.dumps(payload).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            if self.refusal_headers is not None:
                headers += [(k.encode(), v.encode()) for k, v in self.refusal_headers]
            elif status == 429:
                headers.append((b"retry-after", b"2"))
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": str(status)})

    async def _redirect(self, scope: Scope, send: Send, status: int, location: str) -> None:
        assert "websocket.http.response" in scope.get("extensions", {})
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"location", location.encode()), (b"content-length", b"0")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b""})

    # -- events -----------------------------------------------------------------------------

    def _model(self, session: RealtimeSession) -> str:
        for part in session.query.split("&"):
            name, _, value = part.partition("=")
            if name in ("model", "deployment") and value:
                return value
        return "gpt-realtime"

    def _session_config(self, session: RealtimeSession) -> dict[str, Any]:
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": "sess_" + uuid.uuid4().hex[:16],
            "model": self._model(session),
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
        }

    def _session_created(self, session: RealtimeSession) -> dict[str, Any]:
        return {
            "type": "session.created",
            "event_id": _event_id(),
            "session": self._session_config(session),
        }

    async def _on_text(
        self, send: Send, session: RealtimeSession, text: str, tasks: set[asyncio.Task[None]]
    ) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "session.update":
            config = self._session_config(session) | dict(event.get("session") or {})
            await self._send_json(
                send,
                session,
                {"type": "session.updated", "event_id": _event_id(), "session": config},
            )
        elif kind == "conversation.item.create":
            item = dict(event.get("item") or {})
            item.setdefault("id", "item_" + uuid.uuid4().hex[:16])
            item.setdefault("object", "realtime.item")
            item.setdefault("status", "completed")
            created = {
                "type": "conversation.item.created",
                "event_id": _event_id(),
                "previous_item_id": None,
                "item": item,
            }
            await self._send_json(send, session, created)
        elif kind == "response.create":
            await self._respond(send, session)
        elif kind == "test.close":
            await self._close(send, session, int(event.get("code", 1000)), event.get("reason", ""))
        elif kind == "test.burst":
            count, size = int(event.get("count", 50)), int(event.get("size", 1 << 20))
            task = asyncio.ensure_future(self._burst(send, session, count, size))
            tasks.add(task)
        else:
            await self._send(send, session, {"type": "websocket.send", "text": text})

    async def _respond(self, send: Send, session: RealtimeSession) -> None:
        response_id = "resp_" + uuid.uuid4().hex[:16]
        item_id = "item_" + uuid.uuid4().hex[:16]
        response: dict[str, Any] = {
            "id": response_id,
            "object": "realtime.response",
            "status": "in_progress",
            "output": [],
            "output_modalities": ["text"],
        }
        await self._send_json(
            send,
            session,
            {"type": "response.created", "event_id": _event_id(), "response": response},
        )
        for delta in self.deltas:
            await self._send_json(
                send,
                session,
                {
                    "type": "response.output_text.delta",
                    "event_id": _event_id(),
                    "response_id": response_id,
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": delta,
                },
            )
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "".join(self.deltas)}],
        }
        done = response | {"status": "completed", "output": [item]}
        await self._send_json(
            send, session, {"type": "response.done", "event_id": _event_id(), "response": done}
        )

    async def _burst(self, send: Send, session: RealtimeSession, count: int, size: int) -> None:
        chunk = bytes(range(256)) * (size // 256) + bytes(size % 256)
        for i in range(count):
            # Each message starts with its index, so a reader can tell them apart.
            payload = i.to_bytes(4, "big") + chunk[4:]
            if not await self._send(send, session, {"type": "websocket.send", "bytes": payload}):
                return

    # -- sending ----------------------------------------------------------------------------

    async def _send_json(self, send: Send, session: RealtimeSession, event: dict[str, Any]) -> bool:
        return await self._send(
            send, session, {"type": "websocket.send", "text": json.dumps(event)}
        )

    async def _send(self, send: Send, session: RealtimeSession, message: dict[str, Any]) -> bool:
        """Send unless either side has closed; False when the message could not go out."""
        if session.closed_by is not None:
            return False
        try:
            await send(message)
        except OSError:  # uvicorn's ClientDisconnected
            return False
        session.sent += 1
        session.sent_bytes += len(message.get("bytes") or message.get("text") or "")
        return True

    async def _close(self, send: Send, session: RealtimeSession, code: int, reason: str) -> None:
        if session.closed_by is not None:
            return
        session.closed_by = "fake"
        session.close_code = code
        session.close_reason = reason
        session.closed_at = time.monotonic()
        with contextlib.suppress(OSError):
            await send({"type": "websocket.close", "code": code, "reason": reason})


def one_origin(foundry_app: ASGIApp, realtime_app: ASGIApp) -> ASGIApp:
    """One ASGI app: WebSocket scopes go to ``realtime_app``, everything else to
    ``foundry_app`` (so one upstream origin serves both HTTP and the Realtime API)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await realtime_app(scope, receive, send)
        else:
            await foundry_app(scope, receive, send)

    return app
