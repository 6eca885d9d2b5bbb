"""Emulated Foundry / Azure OpenAI data plane: the OpenAI routes apps call, and Claude's
Messages API (claude.py), with Entra auth.

A raw ASGI app. It checks the bearer token like the real service (401 with the Entra-token body
shape), holds a list of deployments (deployments.py) and answers mistakes as Azure does
(azure_errors.py), answers deterministically (an echo of the prompt, "emulated-" model names)
and streams with a configurable per-token delay so a person can watch tokens arrive. Fault
knobs (faults.py) let app developers rehearse 429s, 500s and slow first tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
from types import MappingProxyType
from typing import Any

from starlette.types import Receive, Scope, Send

from proxy.emulator import azure_errors, calls, claude, content_filter, openai_answers
from proxy.emulator.calls import Call
from proxy.emulator.content import answer_text, last_user_text, multipart_parts
from proxy.emulator.deployments import Deployment, Deployments, Kind, model_card, model_info
from proxy.emulator.faults import Faults
from proxy.emulator.sse import send_events
from proxy.emulator.tokens import TokenIssuer
from proxy.emulator.wire import (
    EMULATED_HEADER,
    EmuRequest,
    Headers,
    Reply,
    answer_headers,
    json_reply,
)

COGNITIVE = "https://cognitiveservices.azure.com"
AI = "https://ai.azure.com"
ENTRA_401_MESSAGE = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired."
)
_CLAUDE_ROUTES = frozenset({"/anthropic/v1/messages", "/anthropic/v1/messages/count_tokens"})
# The JSON operations and the kind of deployment each needs.
_JSON_KINDS: MappingProxyType[str, Kind] = MappingProxyType(
    {"chat/completions": "chat", "embeddings": "embeddings"}
)


def _entra_401() -> dict[str, Any]:
    return {"statusCode": 401, "message": ENTRA_401_MESSAGE}


class EmulatedFoundry:
    """The data plane as an ASGI app. Subclasses may add routes or journal requests.

    ``deployments``: the resource's deployments, checked like Azure checks them; a catalogue
    holding None (the test fake's) serves any name and skips Azure's request checks.
    """

    def __init__(
        self,
        issuer: TokenIssuer,
        faults: Faults | None = None,
        deployments: Deployments | None = None,
    ) -> None:
        self.issuer = issuer
        self.faults = faults or Faults()
        self.deployments = deployments or Deployments()
        self._count = 0

    @property
    def strict(self) -> bool:
        return self.deployments.held is not None

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
        fault = self.fault(request)
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

    def fault(self, request: EmuRequest) -> Reply | None:
        """The fault due for this request, in the shape of its route family."""
        self._count += 1
        due = self.faults.due(self._count)
        anthropic = request.path.startswith("/anthropic/")
        if due == "rate_limit":
            wait = self.faults.retry_after
            if anthropic:
                return claude.rate_limited(wait)
            kind: Kind = "embeddings" if request.path.endswith("/embeddings") else "chat"
            version = request.query_value("api-version") or "v1"
            return azure_errors.rate_limited(kind, version, wait)
        if due == "fail":
            return claude.server_error() if anthropic else azure_errors.server_error()
        return None

    def answer_for(self, request: EmuRequest, model: str, prompt: str) -> str:
        """The deterministic answer text: an echo of the prompt."""
        return answer_text(model, prompt)

    def stream_timing(self, request: EmuRequest) -> tuple[float, float]:
        """(delay before the first event, delay between events)."""
        return self.faults.first_token_delay, self.faults.token_delay

    # -- routing ----------------------------------------------------------------------------

    async def route(self, request: EmuRequest, receive: Receive, send: Send) -> None:
        if request.method == "POST" and request.path in _CLAUDE_ROUTES:
            await self.claude(request, request.path.endswith("/count_tokens"), receive, send)
            return
        call = calls.resolve(request)
        answer = calls.version_refusal(request, call, self.strict)
        if answer is not None or call is None:
            await self.reply(send, request, *(answer or azure_errors.resource_not_found()))
            return
        method, operation = request.method, call.operation
        if method == "POST" and operation in ("chat/completions", "responses", "embeddings"):
            if operation == "responses" and call.deployment is not None:
                await self.reply(send, request, *azure_errors.resource_not_found())
            else:
                await self.json_operation(request, call, receive, send)
        elif method == "POST" and operation == "audio/transcriptions":
            await self.reply(send, request, *self.transcription(request, call))
        elif method == "GET" and call.deployment is None:
            await self.reply(send, request, *self.catalogue(request, operation))
        else:
            await self.reply(send, request, *azure_errors.resource_not_found())

    def _deployment(self, name: object, kind: Kind, call: Call) -> Deployment | Reply:
        """The deployment a request names, or Azure's answer when there is none such."""
        if not isinstance(name, str) or not name:
            if self.strict:
                return azure_errors.missing_field("model")
            default = self.deployments.first(kind)
            name = default.name if default else kind
        found = self.deployments.find(name, kind)
        if found is None:
            return azure_errors.deployment_not_found(call.v1)
        if found.kind != kind:
            return azure_errors.operation_not_supported(kind, found.model)
        return found

    def catalogue(self, request: EmuRequest, operation: str) -> Reply:
        listed = self.deployments.listed
        if operation == "models":
            data = [model_card(d) for d in listed]
            return json_reply(200, {"object": "list", "data": data})
        if operation.startswith("models/"):
            found = next((d for d in listed if operation[7:] in (d.model, d.name)), None)
            return (
                json_reply(200, model_card(found)) if found else azure_errors.resource_not_found()
            )
        if operation == "info" and request.path.startswith("/models/") and listed:
            # Which deployment: the query's ``model``, else the chat one (Azure's single-model
            # endpoints answer for the one model they serve).
            default = self.deployments.first("chat") or listed[0]
            found = self.deployments.find(request.query_value("model") or default.name, "chat")
            return (
                json_reply(200, model_info(found))
                if found
                else azure_errors.deployment_not_found(False)
            )
        return azure_errors.resource_not_found()

    # -- answers ----------------------------------------------------------------------------

    def _headers(self) -> Headers:
        return answer_headers()

    async def reply(
        self, send: Send, request: EmuRequest, status: int, headers: Headers, body: bytes
    ) -> None:
        headers = [*headers, EMULATED_HEADER]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _payload(self, request: EmuRequest, required: str) -> dict[str, Any] | Reply:
        """The JSON body, or Azure's 400 for one that is not JSON or lacks ``required``."""
        parsed = request.parsed()
        if not self.strict:
            return parsed if isinstance(parsed, dict) else {}
        if not isinstance(parsed, dict):
            return azure_errors.unparseable_body()
        if required not in parsed:
            return azure_errors.missing_field(required)
        return parsed

    async def json_operation(
        self, request: EmuRequest, call: Call, receive: Receive, send: Send
    ) -> None:
        """Chat completions, the Responses API and embeddings: checked, then answered."""
        operation = call.operation
        kind = _JSON_KINDS.get(operation, "chat")
        required = {"chat/completions": "messages", "responses": "input"}.get(operation, "input")
        payload = self._payload(request, required)
        if isinstance(payload, tuple):
            await self.reply(send, request, *payload)
            return
        found = self._deployment(call.deployment or payload.get("model"), kind, call)
        if isinstance(found, tuple):
            await self.reply(send, request, *found)
            return
        if kind == "embeddings":
            await self.reply(send, request, *self.embeddings(payload, found))
            return
        prompt = last_user_text(payload)
        if content_filter.prompt_tripped(prompt):
            verdict = content_filter.results(filtered=True, prompt=True)
            await self.reply(send, request, *azure_errors.content_filtered(verdict))
            return
        text = self.answer_for(request, found.model, prompt)
        if operation == "responses":
            answer, events = openai_answers.response(payload, found.model, text)
        else:
            cut = content_filter.answer_tripped(prompt)
            answer, events = openai_answers.chat(payload, found.model, text, cut)
        if payload.get("stream"):
            await self.stream(request, events, receive, send)
            return
        first, _ = self.stream_timing(request)
        if first:
            await asyncio.sleep(first)
        await self.reply(send, request, *json_reply(200, answer, self._headers()))

    def embeddings(self, payload: dict[str, Any], deployment: Deployment) -> Reply:
        inputs = openai_answers.embedding_inputs(payload)
        dimensions = payload.get("dimensions", 16)
        if inputs is None:
            return azure_errors.invalid_field(
                "input", "'input' must be a non-empty string, array of strings or token array."
            )
        if not isinstance(dimensions, int) or not 0 < dimensions <= 3072:
            return azure_errors.invalid_field(
                "dimensions", "'dimensions' must be an integer between 1 and 3072."
            )
        answer = openai_answers.embeddings(payload, inputs, deployment.model, dimensions)
        return json_reply(200, answer, self._headers())

    def transcription(self, request: EmuRequest, call: Call) -> Reply:
        parts = multipart_parts(request.body, request.header("content-type") or "")
        upload = parts.get("file")
        if upload is None:
            return azure_errors.invalid_field("file", "A multipart 'file' part is required.")
        model = parts.get("model", (None, b""))[1].decode("utf-8", "replace")
        found = self._deployment(call.deployment or model, "transcription", call)
        if isinstance(found, tuple):
            return found
        name, data = upload[0] or "file", upload[1]
        digest = hashlib.sha256(data).hexdigest()
        text = f"Emulated transcription of {name}: {len(data)} bytes, sha256 {digest}."
        return json_reply(200, {"text": text}, self._headers())

    async def claude(
        self, request: EmuRequest, counting: bool, receive: Receive, send: Send
    ) -> None:
        """Claude's Messages API (count_tokens when ``counting``), in Anthropic's shapes."""
        payload = claude.checked(request.parsed(), counting, self.deployments)
        if isinstance(payload, tuple):
            await self.reply(send, request, *payload)
            return
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

    async def stream(
        self, request: EmuRequest, events: list[bytes], receive: Receive, send: Send
    ) -> None:
        """Send SSE events with the configured pacing; stop as soon as the client leaves."""
        headers = [(b"x-accel-buffering", b"no"), EMULATED_HEADER, *self._headers()]
        timing = self.stream_timing(request)
        await send_events(request, events, timing, headers, self, receive, send)

    # -- observation hooks (the tests journal through these) ---------------------------------

    def on_event(self, request: EmuRequest, data: bytes) -> None:
        """An SSE event was written (``data`` empty: the response head)."""

    def on_complete(self, request: EmuRequest) -> None:
        """A streamed answer was sent in full."""

    def on_disconnect(self, request: EmuRequest) -> None:
        """The client went away mid-stream."""
