"""Model usage from a copy of a response's bytes: prompt, completion and total tokens.

The client gets every byte as the upstream sent it; this module only reads what the forwarder
kept aside: the whole body of a small JSON answer, or the tail of a server-sent-event stream
(the usage chunk comes last, just before ``data: [DONE]``: azure-protocols.md section 6).
Standard library only, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# JSON answers larger than this are not kept for inspection (embeddings of big batches).
JSON_LIMIT = 1024 * 1024
# The usage chunk of a stream is small; keeping this much of the tail always holds it.
STREAM_TAIL = 16 * 1024


@dataclass(frozen=True, slots=True)
class Usage:
    model: str
    prompt: int
    completion: int
    total: int


def _usage(body: object) -> Usage | None:
    if not isinstance(body, dict):
        return None
    # The Responses API nests the final object in its last event.
    if isinstance(body.get("response"), dict):
        body = body["response"]
        assert isinstance(body, dict)
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    # Chat completions and embeddings say prompt/completion; the Responses API input/output.
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    total = usage.get("total_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    if prompt < 0 or completion < 0:
        return None
    if not isinstance(total, int) or total < 0:
        total = prompt + completion
    model = body.get("model")
    return Usage(model if isinstance(model, str) else "", prompt, completion, total)


def from_json(raw: bytes) -> Usage | None:
    try:
        return _usage(json.loads(raw))
    except (ValueError, UnicodeDecodeError):
        return None


def from_stream_tail(tail: bytes) -> Usage | None:
    """The last event of the tail that carries usage (the first line may be cut: skipped)."""
    for line in reversed(tail.split(b"\n")):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]" or not data.startswith(b"{"):
            continue
        found = from_json(data)
        if found is not None:
            return found
    return None
