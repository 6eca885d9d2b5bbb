"""The emulated OpenAI answers: chat completions, the Responses API and embeddings, as JSON and
as the server-sent events of a stream. Pure functions: foundry.py serves them."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from typing import Any

from proxy.emulator import content_filter
from proxy.emulator.content import embedding, last_user_text, token_pieces


def _prompt_tokens(payload: dict[str, Any]) -> int:
    return max(1, len(last_user_text(payload).split()))


def _data(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chat(
    payload: dict[str, Any], model: str, text: str, cut: bool
) -> tuple[dict[str, Any], list[bytes]]:
    """A chat completion as JSON and as stream events. ``cut``: the content filter stopped the
    answer part-way (finish_reason ``content_filter``, the answer's verdict filtered)."""
    pieces = token_pieces(text)
    finish = "stop"
    if cut:
        pieces, finish = pieces[: max(1, len(pieces) // 2)], "content_filter"
    usage = {
        "prompt_tokens": _prompt_tokens(payload),
        "completion_tokens": len(pieces),
        "total_tokens": _prompt_tokens(payload) + len(pieces),
    }
    cid = f"chatcmpl-emulated-{uuid.uuid4().hex[:12]}"
    prompt_results = [
        {"prompt_index": 0, "content_filter_results": content_filter.results(prompt=True)}
    ]
    verdict = content_filter.results(filtered=cut)
    answer = {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": "".join(pieces)},
                "content_filter_results": verdict,
            }
        ],
        "prompt_filter_results": prompt_results,
        "usage": usage,
    }

    def chunk(choices: list[Any], **extra: Any) -> bytes:
        head = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time())}
        return _data({**head, "model": model, "choices": choices, **extra})

    # Azure sends the prompt filter results first, in a chunk with no choices and no model.
    events = [
        _data(
            {
                "id": "",
                "object": "",
                "created": 0,
                "model": "",
                "choices": [],
                "prompt_filter_results": prompt_results,
            }
        ),
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
    ]
    events += [
        chunk([{"index": 0, "delta": {"content": p}, "finish_reason": None}]) for p in pieces
    ]
    last = {"index": 0, "delta": {}, "finish_reason": finish}
    if cut:
        last["content_filter_results"] = verdict
    events.append(chunk([last]))
    if (payload.get("stream_options") or {}).get("include_usage"):
        events.append(chunk([], usage=usage))
    events.append(b"data: [DONE]\n\n")
    return answer, events


def response(payload: dict[str, Any], model: str, text: str) -> tuple[dict[str, Any], list[bytes]]:
    """A Responses API answer as JSON and as its named events."""
    pieces = token_pieces(text)
    rid, mid = f"resp_emulated_{uuid.uuid4().hex[:16]}", f"msg_emulated_{uuid.uuid4().hex[:16]}"
    usage = {"input_tokens": _prompt_tokens(payload), "output_tokens": len(pieces)}
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    part = {"type": "output_text", "text": text, "annotations": []}
    item: dict[str, Any] = {"type": "message", "id": mid, "status": "completed"}
    item.update(role="assistant", content=[part])
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
    started = dict(done, status="in_progress", output=[], usage=None)
    at = {"item_id": mid, "output_index": 0, "content_index": 0}
    named: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        ("response.output_item.added", {"output_index": 0, "item": dict(item, content=[])}),
        ("response.content_part.added", {**at, "part": dict(part, text="")}),
    ]
    named += [("response.output_text.delta", {**at, "delta": p}) for p in pieces]
    named += [
        ("response.output_text.done", {**at, "text": text}),
        ("response.content_part.done", {**at, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        ("response.completed", {"response": done}),
    ]
    events = [
        f"event: {name}\ndata: {json.dumps({'type': name, 'sequence_number': i, **data})}\n\n"
        for i, (name, data) in enumerate(named)
    ]
    return done, [e.encode() for e in events]


def embedding_inputs(payload: dict[str, Any]) -> list[Any] | None:
    """The inputs to embed, one list item each; None when ``input`` is not usable."""
    inputs = payload.get("input")
    if isinstance(inputs, str) or (
        isinstance(inputs, list) and inputs and all(isinstance(i, int) for i in inputs)
    ):
        return [inputs]  # one text, or one already tokenized input
    return inputs if isinstance(inputs, list) and inputs else None


def embeddings(payload: dict[str, Any], inputs: list[Any], model: str, size: int) -> dict[str, Any]:
    data = []
    for index, item in enumerate(inputs):
        vector = embedding(str(item), size)
        encoded: Any = vector
        if payload.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(max(1, len(str(i).split())) for i in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
