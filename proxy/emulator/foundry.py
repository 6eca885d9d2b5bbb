"""Emulated Foundry / Azure OpenAI data plane: the OpenAI routes apps call, and Claude's
Messages API (claude.py), with Entra auth.

A raw ASGI app. It checks the bearer token like the real service (401 with the Entra-token body
shape), answers deterministically (an echo of the prompt, "emulated-" model names) and streams
with a configurable per-token delay so a person can watch tokens arrive. Fault knobs let app
developers rehearse 429s, 500s and slow first tokens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send

from proxy.emulator import claude
from proxy.emulator.content import (
    DEPLOYMENTS,
    answer_text,
    embedding,
    emulated_model,
    last_user_text,
    multipart_file,
    token_pieces,
)
from proxy.emulator.tokens import TokenIssuer

COGNITIVE = "https://cognitiveservices.azure.com"
AI = "https://ai.azure.com"
ENTRA_401_MESSAGE = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired."
)
_DEPLOYMENT_ROUTE = re.compile(r"^/openai/deployments/([A-Za-z0-9._-]+)/(.+)$")
_CLAUDE_ROUTES = frozenset({"/anthropic/v1/messages", "/anthropic/v1/messages/count_tokens"})


def _entra_401() -> dict[str, Any]:
    return {"statusCode": 401, "message": ENTRA_401_MESSAGE}


def _filter_results() -> dict[str, Any]:
    categories = ("hate", "self_harm", "sexual", "violence")
    return {name: {"filtered": False, "severity": "safe"} for name in categories}


Headers = list[tuple[bytes, bytes]]
# On every answer, errors included, so nobody mistakes the emulator for the real service.
EMULATED_HEADER = (b"x-foundry-proxy-emulator", b"true")


@dataclass(slots=True)
class Faults:
    """What the emulated data plane does wrong, on purpose."""

    rate_limit_every: int = 0  # every Nth request gets 429 with Retry-After
    fail_every: int = 0  # every Nth request gets 500
    first_token_delay: float = 0.0  # seconds before the first byte of an answer
    token_delay: float = 0.05  # seconds between streamed tokens


@dataclass(slots=True)
class EmuRequest:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}


def json_reply(
    status: int, payload: Any, headers: Headers | None = None
) -> tuple[int, Headers, bytes]:
    body = json.dumps(payload).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, base + (headers or []), body


def _model_card(name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": 1764115200,
        "owned_by": "foundry-proxy-emulator",
    }


class EmulatedFoundry:
    """The data plane as an ASGI app. Subclasses may add routes or journal requests."""

    def __init__(self, issuer: TokenIssuer, faults: Faults | None = None) -> None:
        self.issuer = issuer
        self.faults = faults or Faults()
        self._count = 0

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        request = EmuRequest(
            scope["method"],
            scope["raw_path"].decode("latin-1"),
            scope["query_string"].decode("latin-1"),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            bytes(body),
        )
        await self.serve(request, receive, send)

    async def serve(self, request: EmuRequest, receive: Receive, send: Send) -> None:
        refusal = self.authorize(request)
        if refusal is not None:
            await self.reply(send, request, *json_reply(401, refusal))
            return
        fault = self.fault()
        if fault is not None:
            await self.reply(send, request, *fault)
            return
        await self.route(request, receive, send)

    # -- policy hooks -----------------------------------------------------------------------

    def audiences(self, path: str) -> tuple[str, ...]:
        if path.startswith(("/api/projects/", "/anthropic/")):
            # Claude on Foundry takes https://ai.azure.com tokens only (docs/claude.md).
            return (AI,)
        if path.startswith("/openai/v1/"):
            # Newer Foundry docs use https://ai.azure.com for /openai/v1 too; both are accepted.
            return (COGNITIVE, AI)
        return (COGNITIVE,)

    def authorize(self, request: EmuRequest) -> dict[str, Any] | None:
        """None when the request carries a good token; else the 401 body to answer with."""
        auth = [v for k, v in request.headers if k == "authorization"]
        if not auth:
            if request.header("api-key") is not None:
                return {
                    "error": {
                        "code": "401",
                        "message": "Access denied due to invalid subscription key or wrong API "
                        "endpoint. Make sure to provide a valid key for an active subscription "
                        "and use a correct regional API endpoint for your resource.",
                    }
                }
            return _entra_401()
        if len(auth) != 1 or not auth[0].startswith("Bearer "):
            return _entra_401()
        verdict = self.check_token(auth[0].removeprefix("Bearer "), self.audiences(request.path))
        request.extra["auth"] = verdict or "ok"
        return _entra_401() if verdict else None

    def check_token(self, token: str, audiences: tuple[str, ...]) -> str | None:
        return self.issuer.verify(token, audiences)

    def fault(self) -> tuple[int, Headers, bytes] | None:
        self._count += 1
        faults = self.faults
        if faults.rate_limit_every and self._count % faults.rate_limit_every == 0:
            return json_reply(
                429,
                {
                    "error": {
                        "code": "429",
                        "message": "Emulated rate limit: retry after 2 seconds.",
                    }
                },
                [
                    (b"retry-after", b"2"),
                    (b"retry-after-ms", b"2000"),
                    (b"x-ratelimit-remaining-requests", b"0"),
                ],
            )
        if faults.fail_every and self._count % faults.fail_every == 0:
            return json_reply(
                500, {"error": {"code": "InternalServerError", "message": "Emulated server error."}}
            )
        return None

    def answer_for(self, request: EmuRequest, model: str, prompt: str) -> str:
        """The deterministic answer text: an echo of the prompt."""
        return answer_text(model, prompt)

    def stream_timing(self, request: EmuRequest) -> tuple[float, float]:
        """(delay before the first event, delay between events)."""
        return self.faults.first_token_delay, self.faults.token_delay

    # -- routing ----------------------------------------------------------------------------

    async def route(self, request: EmuRequest, receive: Receive, send: Send) -> None:
        path, method = request.path, request.method
        deployment: str | None = None
        operation = ""
        if method == "POST" and path in _CLAUDE_ROUTES:
            await self.claude(request, path.endswith("/count_tokens"), receive, send)
            return
        if m := _DEPLOYMENT_ROUTE.match(path):
            if "api-version=" not in request.query:
                await self.not_found(request, send)
                return
            deployment, operation = m.group(1), m.group(2)
        elif path.startswith("/openai/v1/"):
            operation = path.removeprefix("/openai/v1/")
        elif path.startswith("/models/"):
            operation = path.removeprefix("/models/")
        elif path.startswith("/openai/") and "api-version=" in request.query:
            operation = path.removeprefix("/openai/")
        if method == "POST" and operation == "chat/completions":
            await self.chat(request, deployment, receive, send)
        elif method == "POST" and operation == "embeddings":
            await self.embeddings(request, deployment, send)
        elif method == "POST" and operation == "responses" and deployment is None:
            await self.responses(request, receive, send)
        elif method == "POST" and operation == "audio/transcriptions":
            await self.transcription(request, deployment, send)
        elif method == "GET" and operation == "models" and deployment is None:
            data = [_model_card(d) for d in DEPLOYMENTS]
            await self.reply(send, request, *json_reply(200, {"object": "list", "data": data}))
        elif method == "GET" and operation.startswith("models/") and operation[7:] in DEPLOYMENTS:
            await self.reply(send, request, *json_reply(200, _model_card(operation[7:])))
        else:
            await self.not_found(request, send)

    async def not_found(self, request: EmuRequest, send: Send) -> None:
        await self.reply(
            send,
            request,
            *json_reply(404, {"error": {"code": "404", "message": "Resource not found"}}),
        )

    # -- answers ----------------------------------------------------------------------------

    def _headers(self) -> Headers:
        request_id = str(uuid.uuid4()).encode()
        return [
            (b"apim-request-id", request_id),
            (b"x-request-id", request_id),
            (b"x-ms-region", b"emulator"),
            (b"x-ratelimit-remaining-requests", b"999"),
            (b"x-ratelimit-remaining-tokens", b"99999"),
        ]

    async def reply(
        self, send: Send, request: EmuRequest, status: int, headers: Headers, body: bytes
    ) -> None:
        headers = [*headers, EMULATED_HEADER]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def chat(
        self, request: EmuRequest, deployment: str | None, receive: Receive, send: Send
    ) -> None:
        payload = request.json()
        model = emulated_model(deployment or payload.get("model"))
        text = self.answer_for(request, model, last_user_text(payload))
        pieces = token_pieces(text)
        prompt_tokens = max(1, len(last_user_text(payload).split()))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        cid = f"chatcmpl-emulated-{uuid.uuid4().hex[:12]}"
        if not payload.get("stream"):
            first, _ = self.stream_timing(request)
            if first:
                await asyncio.sleep(first)
            answer = {
                "id": cid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text},
                        "content_filter_results": _filter_results(),
                    }
                ],
                "prompt_filter_results": [
                    {"prompt_index": 0, "content_filter_results": _filter_results()}
                ],
                "usage": usage,
            }
            await self.reply(send, request, *json_reply(200, answer, self._headers()))
            return

        def chunk(choices: list[Any], **extra: Any) -> bytes:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": choices,
                **extra,
            }
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        # Azure sends the prompt filter results first, in a chunk with no choices and no model.
        events = [
            b"data: "
            + json.dumps(
                {
                    "id": "",
                    "object": "",
                    "created": 0,
                    "model": "",
                    "choices": [],
                    "prompt_filter_results": [
                        {"prompt_index": 0, "content_filter_results": _filter_results()}
                    ],
                }
            ).encode()
            + b"\n\n",
            chunk(
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            ),
        ]
        events += [
            chunk([{"index": 0, "delta": {"content": p}, "finish_reason": None}]) for p in pieces
        ]
        events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if (payload.get("stream_options") or {}).get("include_usage"):
            events.append(chunk([], usage=usage))
        events.append(b"data: [DONE]\n\n")
        await self.stream(request, events, receive, send)

    async def claude(
        self, request: EmuRequest, counting: bool, receive: Receive, send: Send
    ) -> None:
        """Claude's Messages API (count_tokens when ``counting``), in Anthropic's shapes."""
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            payload = None
        wrong = claude.problem(payload, counting)
        if wrong is not None:
            body = claude.error("invalid_request_error", wrong)
            await self.reply(send, request, *json_reply(400, body, self._headers()))
            return
        assert isinstance(payload, dict)
        if counting:
            counted = {"input_tokens": claude.input_tokens(payload)}
            await self.reply(send, request, *json_reply(200, counted, self._headers()))
            return
        text = self.answer_for(request, claude.model_of(payload), claude.prompt_text(payload))
        if not payload.get("stream"):
            first, _ = self.stream_timing(request)
            if first:
                await asyncio.sleep(first)
            answer = claude.message(payload, text)
            await self.reply(send, request, *json_reply(200, answer, self._headers()))
            return
        await self.stream(request, claude.events(payload, text), receive, send)

    async def responses(self, request: EmuRequest, receive: Receive, send: Send) -> None:
        payload = request.json()
        model = emulated_model(payload.get("model"))
        text = self.answer_for(request, model, last_user_text(payload))
        pieces = token_pieces(text)
        rid, mid = f"resp_emulated_{uuid.uuid4().hex[:16]}", f"msg_emulated_{uuid.uuid4().hex[:16]}"
        usage = {
            "input_tokens": max(1, len(last_user_text(payload).split())),
            "output_tokens": len(pieces),
        }
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {
            "type": "message",
            "id": mid,
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
        done = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model,
            "output": [item],
            "usage": usage,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "metadata": {},
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
        }
        if not payload.get("stream"):
            await self.reply(send, request, *json_reply(200, done, self._headers()))
            return
        started = dict(done, status="in_progress", output=[], usage=None)
        empty_item = dict(item, status="in_progress", content=[])
        named: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": started}),
            ("response.in_progress", {"response": started}),
            ("response.output_item.added", {"output_index": 0, "item": empty_item}),
            (
                "response.content_part.added",
                {
                    "item_id": mid,
                    "output_index": 0,
                    "content_index": 0,
                    "part": dict(part, text=""),
                },
            ),
        ]
        named += [
            (
                "response.output_text.delta",
                {"item_id": mid, "output_index": 0, "content_index": 0, "delta": p},
            )
            for p in pieces
        ]
        named += [
            (
                "response.output_text.done",
                {"item_id": mid, "output_index": 0, "content_index": 0, "text": text},
            ),
            (
                "response.content_part.done",
                {"item_id": mid, "output_index": 0, "content_index": 0, "part": part},
            ),
            ("response.output_item.done", {"output_index": 0, "item": item}),
            ("response.completed", {"response": done}),
        ]
        events = [
            f"event: {name}\ndata: {json.dumps({'type': name, 'sequence_number': i, **data})}\n\n"
            for i, (name, data) in enumerate(named)
        ]
        await self.stream(request, [e.encode() for e in events], receive, send)

    async def embeddings(self, request: EmuRequest, deployment: str | None, send: Send) -> None:
        payload = request.json()
        inputs = payload.get("input", [])
        if isinstance(inputs, str) or (inputs and all(isinstance(i, int) for i in inputs)):
            inputs = [inputs]  # one text, or one already tokenized input
        dimensions = payload.get("dimensions", 16)
        if (
            not isinstance(inputs, list)
            or not inputs
            or not isinstance(dimensions, int)
            or not 0 < dimensions <= 3072
        ):
            problem = {
                "error": {
                    "code": "invalid_request",
                    "message": "'input' must be a non-empty string or array, and "
                    "'dimensions' between 1 and 3072.",
                }
            }
            await self.reply(send, request, *json_reply(400, problem))
            return
        size = dimensions
        data = []
        for index, item in enumerate(inputs):
            vector = embedding(str(item), size)
            encoded: Any = vector
            if payload.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(max(1, len(str(i).split())) for i in inputs)
        answer = {
            "object": "list",
            "data": data,
            "model": emulated_model(deployment or payload.get("model") or DEPLOYMENTS[1]),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        await self.reply(send, request, *json_reply(200, answer, self._headers()))

    async def transcription(self, request: EmuRequest, deployment: str | None, send: Send) -> None:
        upload = multipart_file(request.body, request.header("content-type") or "")
        if upload is None:
            await self.reply(
                send,
                request,
                *json_reply(
                    400,
                    {
                        "error": {
                            "code": "invalid_request",
                            "message": "A multipart 'file' part is required.",
                        }
                    },
                ),
            )
            return
        name, data = upload
        digest = hashlib.sha256(data).hexdigest()
        text = f"Emulated transcription of {name}: {len(data)} bytes, sha256 {digest}."
        await self.reply(send, request, *json_reply(200, {"text": text}, self._headers()))

    async def stream(
        self, request: EmuRequest, events: list[bytes], receive: Receive, send: Send
    ) -> None:
        """Send SSE events with the configured pacing; stop as soon as the client leaves."""
        first, between = self.stream_timing(request)
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.on_disconnect(request)
            gone.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            if first:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), first)
            if gone.is_set():
                return
            headers = [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"x-accel-buffering", b"no"),
                EMULATED_HEADER,
                *self._headers(),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            self.on_event(request, b"")
            for index, event in enumerate(events):
                if index and between:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gone.wait(), between)
                if gone.is_set():
                    return
                await send({"type": "http.response.body", "body": event, "more_body": True})
                self.on_event(request, event)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.on_complete(request)
        finally:
            watcher.cancel()

    # -- observation hooks (the tests journal through these) ---------------------------------

    def on_event(self, request: EmuRequest, data: bytes) -> None:
        """An SSE event was written (``data`` empty: the response head)."""

    def on_complete(self, request: EmuRequest) -> None:
        """A streamed answer was sent in full."""

    def on_disconnect(self, request: EmuRequest) -> None:
        """The client went away mid-stream."""
