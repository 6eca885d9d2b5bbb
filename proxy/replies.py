"""Responses the proxy makes itself, in the OpenAI error shape SDKs already parse.

``{"error": {"message", "type", "code", "param"}}``: the openai SDKs surface ``message`` and
``code`` to the caller, so these say what went wrong and what fixes it.
"""

from __future__ import annotations

import json
from types import MappingProxyType

from starlette.types import Send

_TYPES = MappingProxyType(
    {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error"}
)


def error_body(status: int, code: str, message: str) -> bytes:
    kind = _TYPES.get(status, "proxy_error")
    payload = {"error": {"message": message, "type": kind, "code": code, "param": None}}
    return json.dumps(payload).encode()


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = error_body(status, code, message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-foundry-proxy-error", code.encode()),
    ]
    if extra_headers:
        headers += extra_headers
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
