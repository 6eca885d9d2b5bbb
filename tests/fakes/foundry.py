"""A fake Foundry / Azure OpenAI data plane: a raw ASGI app with a journal of what it received.

It checks the bearer token against the ledger like Foundry does (401 with the Entra-token body
shape), serves the OpenAI routes the tests use, and takes per-request steering headers:
``x-fake-chunks`` (SSE events), ``x-fake-delay`` (seconds between events), ``x-fake-first-delay``
(seconds before the first byte). Every request is journalled with its raw target, headers, body
digest and whether the client stayed to the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.tokens import TokenLedger

COGNITIVE = "https://cognitiveservices.azure.com/.default"
AI = "https://ai.azure.com/.default"
ENTRA_401 = {
    "statusCode": 401,
    "message": "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired.",
}


@dataclass
class Entry:
    method: str
    raw_path: str
    query: str
    headers: list[tuple[str, str]]
    body_len: int
    body_sha256: str
    auth: str  # "ok" or why the token was refused
    token_serial: int | None
    started: float
    first_byte: float | None = None
    ended: float | None = None
    completed: bool = False
    disconnected_at: float | None = None
    events: list[float] = field(default_factory=list)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


def _json(
    status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(payload).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, base + (headers or []), body


def _chunk(cid: str, model: str, choices: list[Any], **extra: Any) -> bytes:
    obj = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": 1764115200,
        "model": model,
        "choices": choices,
        **extra,
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _multipart_file(body: bytes, content_type: str) -> bytes | None:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return None
    boundary = b"--" + match.group(1).encode()
    for part in body.split(boundary):
        head, sep, data = part.partition(b"\r\n\r\n")
        if sep and b'name="file"' in head:
            return data.removesuffix(b"\r\n")
    return None


class FakeFoundry:
    def __init__(self, ledger: TokenLedger) -> None:
        self.ledger = ledger
        self.journal: list[Entry] = []
        self._lock = threading.Lock()
        #: Headers added to every response (rate-limit headers and the like).
        self.extra_headers: list[tuple[bytes, bytes]] = []

    def entries(self, path_part: str = "") -> list[Entry]:
        with self._lock:
            return [e for e in self.journal if path_part in e.raw_path]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        raw_path = scope["raw_path"].decode("latin-1")
        auth, serial = self._authorize(headers, raw_path)
        entry = Entry(
            scope["method"],
            raw_path,
            scope["query_string"].decode("latin-1"),
            headers,
            len(body),
            hashlib.sha256(body).hexdigest(),
            auth,
            serial,
            time.monotonic(),
        )
        with self._lock:
            self.journal.append(entry)
        if auth != "ok":
            await self._send(send, entry, *_json(401, ENTRA_401))
            return
        await self._route(entry, bytes(body), receive, send)

    def _authorize(self, headers: list[tuple[str, str]], raw_path: str) -> tuple[str, int | None]:
        values = [v for k, v in headers if k == "authorization"]
        if len(values) != 1 or not values[0].startswith("Bearer "):
            return f"{len(values)} authorization headers", None
        token = values[0].removeprefix("Bearer ")
        audience = AI if raw_path.startswith("/api/projects/") else COGNITIVE
        verdict = self.ledger.check(token, audience)
        return verdict or "ok", self.ledger.serial(token)

    async def _send(
        self, send: Any, entry: Entry, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": headers + self.extra_headers,
            }
        )
        entry.first_byte = time.monotonic()
        await send({"type": "http.response.body", "body": body})
        entry.ended = time.monotonic()
        entry.completed = True

    async def _route(self, entry: Entry, body: bytes, receive: Any, send: Any) -> None:
        path = entry.raw_path
        request: Any = {}
        if body and (entry.header("content-type") or [""])[0].startswith("application/json"):
            request = json.loads(body)
        model = request.get("model", "gpt-test") if isinstance(request, dict) else "gpt-test"
        if first := entry.header("x-fake-first-delay"):
            await asyncio.sleep(float(first[0]))
        if path.endswith("/chat/completions"):
            if isinstance(request, dict) and request.get("stream"):
                await self._stream_chat(entry, request, receive, send)
                return
            text = "Hello from the fake Foundry."
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1764115200,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
            }
            await self._send(
                send,
                entry,
                *_json(
                    200,
                    payload,
                    [
                        (b"apim-request-id", b"apim-fake-1"),
                        (b"x-request-id", b"req-fake-1"),
                        (b"x-ratelimit-remaining-requests", b"99"),
                        (b"x-ratelimit-remaining-tokens", b"9999"),
                    ],
                ),
            )
        elif path.endswith("/embeddings"):
            inputs = request.get("input", [])
            inputs = [inputs] if isinstance(inputs, str) else inputs
            data = [
                {"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), 0.2, 0.3]}
                for i in range(len(inputs))
            ]
            payload = {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
            await self._send(send, entry, *_json(200, payload))
        elif path.endswith("/models") and entry.method == "GET":
            payload = {
                "object": "list",
                "data": [
                    {
                        "id": "gpt-test",
                        "object": "model",
                        "created": 1764115200,
                        "owned_by": "system",
                    }
                ],
            }
            await self._send(send, entry, *_json(200, payload))
        elif path.endswith("/audio/transcriptions"):
            ctype = (entry.header("content-type") or [""])[0]
            upload = _multipart_file(body, ctype)
            digest = hashlib.sha256(upload).hexdigest() if upload is not None else "no file part"
            await self._send(
                send, entry, *_json(200, {"text": f"sha256={digest} bytes={len(upload or b'')}"})
            )
        elif path.endswith("/hop-headers"):
            await self._send(
                send,
                entry,
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
        elif path.endswith("/denied"):
            denied = {
                "error": {
                    "code": "PermissionDenied",
                    "message": "The principal lacks the required data action.",
                }
            }
            await self._send(send, entry, *_json(401, denied))
        elif m := re.search(r"/status/(\d{3})$", path):
            await self._send(
                send,
                entry,
                *_json(
                    int(m.group(1)),
                    {"error": {"code": m.group(1), "message": "as asked"}},
                    [
                        (b"retry-after", b"3"),
                        (b"x-ratelimit-remaining-requests", b"0"),
                    ],
                ),
            )
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
        else:
            echo = {"method": entry.method, "path": path, "query": entry.query}
            await self._send(send, entry, *_json(200, echo))

    async def _stream_chat(
        self, entry: Entry, request: dict[str, Any], receive: Any, send: Any
    ) -> None:
        chunks = int((entry.header("x-fake-chunks") or ["5"])[0])
        delay = float((entry.header("x-fake-delay") or ["0.05"])[0])
        model = request.get("model", "gpt-test")
        cid = "chatcmpl-fake-stream"
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            entry.disconnected_at = time.monotonic()
            disconnected.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"x-accel-buffering", b"no"),
                    (b"apim-request-id", b"apim-stream"),
                ],
            }
        )
        entry.first_byte = time.monotonic()
        events = [
            _chunk(
                cid,
                "",
                [],
                prompt_filter_results=[{"prompt_index": 0, "content_filter_results": {}}],
            )
        ]
        events += [
            _chunk(
                cid, model, [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}]
            )
            for i in range(chunks)
        ]
        events.append(_chunk(cid, model, [{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if (request.get("stream_options") or {}).get("include_usage"):
            events.append(
                _chunk(
                    cid,
                    model,
                    [],
                    usage={
                        "prompt_tokens": 5,
                        "completion_tokens": chunks,
                        "total_tokens": 5 + chunks,
                    },
                )
            )
        events.append(b"data: [DONE]\n\n")
        try:
            for i, event in enumerate(events):
                if i and delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(disconnected.wait(), delay)
                if disconnected.is_set():
                    return
                await send({"type": "http.response.body", "body": event, "more_body": True})
                entry.events.append(time.monotonic())
            await send({"type": "http.response.body", "body": b""})
            entry.completed = True
        finally:
            entry.ended = time.monotonic()
            watcher.cancel()
