"""Model usage from a copy of a response's bytes: prompt, completion and total tokens (and
Claude's prompt-cache reads and writes); and the model a small request body names, for answers
that name none.

The client gets every byte as the upstream sent it; this module only reads what the forwarder
kept aside: the whole body of a small JSON answer, or the head and tail of a larger one (its
``usage`` object comes last; Claude names the model first, OpenAI's embeddings and Azure's
alphabetical chat answers just before the usage), or the tail of a server-sent-event stream
(the usage chunk comes last, just before ``data: [DONE]``). A Claude stream splits its usage
between its first event (``message_start``: the model and the input tokens) and its last but
one (``message_delta``: the output tokens, and in newer API versions the input ones again), so
for those the forwarder keeps the head of the stream too.
Standard library only, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Of a JSON answer the forwarder keeps this much of the head (where Claude names the model) and
# between JSON_TAIL and twice that of the tail (the usage object, a few hundred bytes): a
# thousand answers in progress hold a few MB whatever their size (docs/security.md).
JSON_HEAD = 4 * 1024
JSON_TAIL = 4 * 1024
# The usage chunk of a stream is a few hundred bytes; this much of the tail always holds it,
# and a thousand open streams keep only a few MB for it.
STREAM_TAIL = 4 * 1024
# A Claude stream's message_start event is a few hundred bytes and comes first.
STREAM_HEAD = 4 * 1024


@dataclass(frozen=True, slots=True)
class Usage:
    """``prompt`` counts every input token the model read: for Claude, whose ``input_tokens``
    leaves out the prompt cache, that is input + cache reads + cache writes, so the figure
    means the same as OpenAI's ``prompt_tokens`` (which includes cached tokens)."""

    model: str
    prompt: int
    completion: int
    total: int
    cache_read: int = 0  # Claude's cache_read_input_tokens
    cache_creation: int = 0  # Claude's cache_creation_input_tokens


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
    cache_read = _count(usage.get("cache_read_input_tokens"))
    cache_creation = _count(usage.get("cache_creation_input_tokens"))
    prompt += cache_read + cache_creation
    if not isinstance(total, int) or total < 0:
        total = prompt + completion
    model = body.get("model")
    return Usage(
        model if isinstance(model, str) else "",
        prompt,
        completion,
        total,
        cache_read,
        cache_creation,
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0


_DECODER = json.JSONDecoder()

# Request bodies up to this size are decoded for their model when the answer did not name it
# (a stream without usage, an error): json.loads measured ~4 us for a one-message chat request,
# ~20 us at 16 KiB and ~80 us at 64 KiB on the benchmark machine, against ~300 us of CPU for a
# whole 100-event stream. The openai SDKs put the model after the messages, so it cannot be
# found without decoding what comes before it (a string-aware scan in Python cost more).
REQUEST_MODEL_LIMIT = 64 * 1024
# Deployment and model names (letters, digits, ".", "_", "-"; registry ids add ":", "/", "@"):
# anything else is not logged, so a client cannot write arbitrary text into the access log.
_MODEL_NAME = re.compile(r"[A-Za-z0-9._:/@+-]{1,256}")
_OBJECT_START = re.compile(rb"\s*\{")


def model_of_request(body: bytes) -> str:
    """The ``model`` a JSON request body names at its top level; "" when it names none, is not
    a JSON object, or is larger than REQUEST_MODEL_LIMIT."""
    if len(body) > REQUEST_MODEL_LIMIT or not _OBJECT_START.match(body) or b'"model"' not in body:
        return ""  # multipart uploads (audio) name their model in a form field: not read
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) and _MODEL_NAME.fullmatch(model) else ""


def from_json(raw: bytes, head: bytes | None = None) -> Usage | None:
    """Usage of a JSON answer: ``raw`` is the whole answer, or, when ``head`` is given, the
    last bytes of one too large to keep (``head`` its first bytes; the two do not meet). Only
    the ``usage`` object and the ``model`` string are decoded (raw_decode from where they
    start): decoding a whole chat answer cost ~10 us a request, about as much as the rest of
    the observability together (benchmark, operations issue)."""
    usage_at = raw.rfind(b'"usage"')
    if usage_at == -1:
        return None
    if head is None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        model_at = text.find('"model"')
        model = _value_after(text, model_at) if model_at != -1 else None
        return _usage({"usage": _value_after(text, text.rfind('"usage"')), "model": model})
    # Cut pieces may start or end inside a UTF-8 sequence: only string contents can suffer.
    tail_text = raw.decode("utf-8", "replace")
    found = _value_after(tail_text, tail_text.rfind('"usage"'))
    model = None
    for text in (head.decode("utf-8", "replace"), tail_text):
        model_at = text.find('"model"')
        model = _value_after(text, model_at) if model_at != -1 else None
        if isinstance(model, str):
            break
    return _usage({"usage": found, "model": model})


def _value_after(text: str, key_at: int) -> object:
    """The JSON value that follows the key starting at ``key_at`` (None if unreadable)."""
    colon = text.find(":", key_at)
    if colon == -1:
        return None
    start = colon + 1
    while start < len(text) and text[start] in " \t\r\n":
        start += 1
    try:
        return _DECODER.raw_decode(text, start)[0]
    except ValueError:
        return None


def from_stream_tail(tail: bytes) -> Usage | None:
    """The last event of the tail that carries usage (the first line may be cut: skipped)."""
    for line in reversed(tail.split(b"\n")):
        line = line.strip()
        # Decoding every event of the tail cost ~0.5 ms per stream: only the one that can be it.
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        data = line[5:].strip()
        if data == b"[DONE]" or not data.startswith(b"{"):
            continue
        try:
            found = _usage(json.loads(data))
        except (ValueError, UnicodeDecodeError):
            continue
        if found is not None:
            return found
    return None


def from_anthropic_stream(head: bytes, tail: bytes) -> Usage | None:
    """Usage of a Claude stream: the model and input counts of the ``message_start`` event in
    the stream's ``head``, updated by the cumulative counts of the last ``message_delta`` event
    in its ``tail`` (either alone when the other is missing: a stream cut short still read its
    input). As in from_stream_tail, only the lines that can be these events are decoded."""
    start = _event(head.split(b"\n"), b'"message_start"')
    delta = _event(reversed(tail.split(b"\n")), b'"message_delta"')
    message = start.get("message") if start is not None else None
    counts: dict[str, object] = {}
    model: object = None
    if isinstance(message, dict):
        model = message.get("model")
        if isinstance(message.get("usage"), dict):
            counts.update(message["usage"])
    if delta is not None and isinstance(delta.get("usage"), dict):
        # Counts a delta leaves out or sends as null keep message_start's value.
        counts.update((k, v) for k, v in delta["usage"].items() if isinstance(v, int))
    if not counts:
        return None
    counts.setdefault("input_tokens", 0)
    counts.setdefault("output_tokens", 0)
    return _usage({"usage": counts, "model": model})


def _event(lines: Iterable[bytes], kind: bytes) -> dict[str, Any] | None:
    """The first of ``lines`` that is an SSE data line of the event type ``kind``, decoded."""
    for line in lines:
        line = line.strip()
        if not line.startswith(b"data:") or kind not in line:
            continue
        try:
            found = json.loads(line[5:])
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(found, dict) and found.get("type") == kind.strip(b'"').decode():
            return found
    return None
