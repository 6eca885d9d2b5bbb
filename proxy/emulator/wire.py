"""The emulated data plane's request and reply primitives: a buffered request, JSON replies, and
the header that marks every answer as emulated."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

Headers = list[tuple[bytes, bytes]]
Reply = tuple[int, Headers, bytes]
# On every answer, errors included, so nobody mistakes the emulator for the real service.
EMULATED_HEADER = (b"x-foundry-proxy-emulator", b"true")


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
        """The body as a JSON object; empty when it is not one (lenient callers)."""
        parsed = self.parsed()
        return parsed if isinstance(parsed, dict) else {}

    def parsed(self) -> object:
        """The body as JSON, or None when it is empty, not UTF-8 or not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:  # UnicodeDecodeError included
            return None

    def query_value(self, name: str) -> str | None:
        for pair in self.query.split("&"):
            key, _, value = pair.partition("=")
            if key == name:
                return value
        return None


def json_reply(status: int, payload: Any, headers: Headers | None = None) -> Reply:
    body = json.dumps(payload).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, base + (headers or []), body


def answer_headers() -> Headers:
    """The headers Azure puts on a successful answer: its request ids, region and what is left
    of the deployment's rate limits (section 8 of docs/azure.md)."""
    request_id = str(uuid.uuid4()).encode()
    return [
        (b"apim-request-id", request_id),
        (b"x-request-id", request_id),
        (b"x-ms-region", b"emulator"),
        (b"x-ratelimit-remaining-requests", b"999"),
        (b"x-ratelimit-remaining-tokens", b"99999"),
    ]
