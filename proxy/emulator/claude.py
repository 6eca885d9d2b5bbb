"""Emulated Claude on Foundry: the Anthropic Messages API's answers and stream events.

Foundry serves Claude at ``/anthropic/v1/messages`` and ``/anthropic/v1/messages/count_tokens``
in Anthropic's own wire format (docs/claude.md). The shapes here are Anthropic's public API
reference: a ``message`` object with ``content`` blocks and ``usage``; a stream of named events
(``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``...,
``content_block_stop``, ``message_delta`` with the final usage, ``message_stop``); errors as
``{"type": "error", "error": {"type", "message"}}``. Pure functions: foundry.py serves them.
"""

from __future__ import annotations

import json
import uuid
from types import MappingProxyType
from typing import Any

from proxy.emulator.azure_errors import DEPLOYMENT_NOT_FOUND, throttled
from proxy.emulator.content import emulated_model, token_pieces
from proxy.emulator.deployments import Deployments
from proxy.emulator.wire import Reply, json_reply

# Anthropic's HTTP status for each error type (its API reference, "Errors").
_STATUS = MappingProxyType(
    {
        "invalid_request_error": 400,
        "authentication_error": 401,
        "permission_error": 403,
        "not_found_error": 404,
        "rate_limit_error": 429,
        "api_error": 500,
        "overloaded_error": 529,
    }
)


def error(kind: str, message: str) -> dict[str, Any]:
    """Anthropic's error body (``kind``: invalid_request_error, not_found_error, ...)."""
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_reply(kind: str, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    return json_reply(_STATUS[kind], error(kind, message), headers)


def deployment_not_found() -> Reply:
    """An unknown deployment in ``model``: Anthropic's envelope, Azure's words (docs/azure.md)."""
    return error_reply("not_found_error", DEPLOYMENT_NOT_FOUND)


def not_a_claude_deployment(model: str) -> Reply:
    return error_reply(
        "invalid_request_error",
        f"The messages operation does not work with the specified model, {model}.",
    )


def rate_limited(retry_after: float) -> Reply:
    return error_reply(
        "rate_limit_error",
        "This request would exceed the rate limit for this deployment. Please retry after "
        f"{max(1, round(retry_after))} seconds. (emulated)",
        throttled(retry_after),
    )


def server_error() -> Reply:
    return error_reply("api_error", "Internal server error (emulated)")


def problem(payload: object, counting: bool) -> str | None:
    """What Anthropic would refuse in a request body with 400 invalid_request_error; None when
    it is well formed. ``counting``: count_tokens, which takes no max_tokens."""
    if not isinstance(payload, dict):
        return "The request body is not a JSON object."
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        return "model: Field required"
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    if not counting:
        tokens = payload.get("max_tokens")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
            return "max_tokens: Field required (a positive integer)"
    return None


def checked(payload: object, counting: bool, deployments: Deployments) -> dict[str, Any] | Reply:
    """The request body when Foundry would answer it; else Anthropic's error for it: a 400 for
    a malformed request, a 404 for a deployment the resource does not hold, a 400 for one that
    is not Claude."""
    wrong = problem(payload, counting)
    if wrong is not None:
        return error_reply("invalid_request_error", wrong)
    assert isinstance(payload, dict)
    found = deployments.find(payload["model"], "claude")
    if found is None:
        return deployment_not_found()
    if found.kind != "claude":
        return not_a_claude_deployment(found.model)
    return payload


def prompt_text(payload: dict[str, Any]) -> str:
    """All the text a request gives the model: system prompt and every message."""
    parts: list[str] = []
    system = payload.get("system")
    for source in ([{"content": system}] if system else []) + list(payload["messages"]):
        content = source.get("content") if isinstance(source, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [str(b.get("text", "")) for b in content if isinstance(b, dict)]
    return " ".join(parts)


def input_tokens(payload: dict[str, Any]) -> int:
    """The emulated count: a word is a token, as in the emulator's OpenAI answers."""
    return max(1, len(prompt_text(payload).split()))


def model_of(payload: dict[str, Any]) -> str:
    return emulated_model(payload["model"])


def answer(payload: dict[str, Any], text: str) -> tuple[list[str], str]:
    """The streamed pieces of ``text`` that fit in max_tokens, and the stop reason."""
    pieces = token_pieces(text)
    limit = payload["max_tokens"]
    if len(pieces) > limit:
        return pieces[:limit], "max_tokens"
    return pieces, "end_turn"


def _usage(prompt: int, output: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
    }


def message(payload: dict[str, Any], text: str) -> dict[str, Any]:
    """The whole answer of a request without ``stream``."""
    pieces, stop = answer(payload, text)
    return {
        "id": f"msg_emulated_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model_of(payload),
        "content": [{"type": "text", "text": "".join(pieces)}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _usage(input_tokens(payload), len(pieces)),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


def events(payload: dict[str, Any], text: str) -> list[bytes]:
    """The server-sent events of a streamed answer, in Anthropic's order."""
    pieces, stop = answer(payload, text)
    start = message(payload, "")
    start.update(content=[], stop_reason=None, usage=_usage(input_tokens(payload), 1))
    out = [
        _event("message_start", {"message": start}),
        _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        _event("ping", {}),
    ]
    out += [
        _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
        for p in pieces
    ]
    out += [
        _event("content_block_stop", {"index": 0}),
        _event(
            "message_delta",
            {
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": len(pieces)},
            },
        ),
        _event("message_stop", {}),
    ]
    return out
