"""Several fake Foundry resources on loopback, for the backend pool's tests (docs/backends.md).

Each ``FakeResource`` is a journaling FakeFoundry on its own port that trusts the same token
issuer, with knobs a resource's bad day needs: answer every request with a status and headers
(429 with ``retry-after``, 503), break a stream right after its first event, and
``RefusingOrigin``: a loopback port that is bound but never listens, so connecting is refused.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from proxy.emulator.wire import EmuRequest, json_reply
from tests.fakes.foundry import FakeFoundry
from tests.fakes.serve import ServerThread, bind_loopback
from tests.fakes.tokens import RecordingIssuer


class FakeResource(FakeFoundry):
    """A fake resource named ``name`` (its answers carry ``x-fake-resource: name``)."""

    def __init__(self, issuer: RecordingIssuer, name: str) -> None:
        super().__init__(issuer)
        self.name = name
        #: (status, headers): every request is answered so while set (an Azure-shaped error).
        self.status: tuple[int, list[tuple[bytes, bytes]]] | None = None
        #: Answer 200 text/event-stream, write one event, then cut the connection.
        self.break_stream = False
        self.server: ServerThread | None = None
        self._seen_models: list[str] = []

    def start(self) -> FakeResource:
        self.server = ServerThread(self).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def throttle(self, retry_after: str = "30", header: bytes = b"retry-after") -> None:
        self.status = (429, [(header, retry_after.encode())])

    def models_seen(self) -> list[str]:
        """The ``model`` of each JSON request body received (the deployment on /v1)."""
        return [m for m in self._seen_models if m]

    async def serve(self, request: EmuRequest, receive: Any, send: Any) -> None:
        try:
            self._seen_models.append(str(json.loads(request.body).get("model", "")))
        except (ValueError, AttributeError):
            self._seen_models.append("")
        await super().serve(request, receive, send)

    def fault(self, request: EmuRequest) -> Any:
        if self.status is not None:
            status, headers = self.status
            body = {"error": {"code": str(status), "message": f"{self.name} says {status}"}}
            return json_reply(status, body, headers)
        return super().fault(request)

    async def route(self, request: EmuRequest, receive: Any, send: Any) -> None:
        if not self.break_stream:
            await super().route(request, receive, send)
            return
        entry = request.extra["entry"]
        entry.first_byte = asyncio.get_running_loop().time()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        event = {"choices": [{"index": 0, "delta": {"content": f"from {self.name}"}}]}
        chunk = b"data: " + json.dumps(event).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        raise ConnectionAbortedError("fake resource breaks the stream after its first event")

    async def reply(
        self, send: Any, request: EmuRequest, status: int, headers: Any, body: bytes
    ) -> None:
        await super().reply(
            send, request, status, [*headers, (b"x-fake-resource", self.name.encode())], body
        )


class RefusingOrigin:
    """A loopback origin whose port is bound but not listening: connections are refused at
    once (the socket is held so no other server can take the port meanwhile)."""

    def __init__(self) -> None:
        self.sock = bind_loopback()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()
