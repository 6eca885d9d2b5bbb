"""Model usage read from copies of answers (usage.py)."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given
from hypothesis import strategies as st

from proxy.usage import (
    JSON_HEAD,
    JSON_TAIL,
    Usage,
    from_anthropic_stream,
    from_json,
    from_stream_tail,
)


def test_chat_completion_json() -> None:
    body = {
        "id": "x",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"message": {"content": 'text with "usage" and "model" inside'}}],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    assert from_json(json.dumps(body).encode()) == Usage("gpt-4o-mini-2024-07-18", 11, 7, 18)


def test_responses_api_and_embeddings() -> None:
    responses = {"model": "gpt-4.1", "usage": {"input_tokens": 5, "output_tokens": 3}}
    assert from_json(json.dumps(responses).encode()) == Usage("gpt-4.1", 5, 3, 8)
    embeddings = {"model": "ada", "usage": {"prompt_tokens": 4, "total_tokens": 4}}
    assert from_json(json.dumps(embeddings).encode()) == Usage("ada", 4, 0, 4)


def test_stream_tail_finds_the_usage_chunk_before_done() -> None:
    events = [
        {"model": "m", "choices": [{"delta": {"content": "hi"}}], "usage": None},
        {"model": "m", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}},
    ]
    stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    stream += b"data: [DONE]\n\n"
    assert from_stream_tail(stream[5:]) == Usage("m", 2, 1, 3)  # a cut first line is fine
    completed = {
        "type": "response.completed",
        "response": {
            "model": "r",
            "usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13},
        },
    }
    named = b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n"
    assert from_stream_tail(named) == Usage("r", 9, 4, 13)


def test_no_usage_or_garbage_gives_none() -> None:
    assert from_json(b'{"model": "m", "choices": []}') is None
    assert from_json(b'{"usage": {"prompt_tokens": "many"}}') is None
    assert from_json(b"\xff\xfe not json") is None
    assert from_stream_tail(b"data: [DONE]\n\n") is None


_CLAUDE_USAGE = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 2000,
    "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 7,
    "service_tier": "standard",
}


def test_claude_message_json_counts_the_prompt_cache_as_prompt() -> None:
    message = {
        "model": "claude-sonnet-4-5",
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": 'a "usage" and a "model" in the text'}],
        "stop_reason": "end_turn",
        "usage": _CLAUDE_USAGE,
    }
    assert from_json(json.dumps(message).encode()) == Usage(
        "claude-sonnet-4-5", 2112, 7, 2119, cache_read=2000, cache_creation=100
    )
    # count_tokens answers carry no usage: counting is not consumption.
    assert from_json(b'{"input_tokens": 42}') is None


def _sse(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _claude_stream(deltas: int, final_usage: dict[str, object]) -> bytes:
    start_usage = dict(_CLAUDE_USAGE, output_tokens=1)
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    out = _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {**message, "model": "claude-haiku-4-5", "usage": start_usage},
        },
    )
    out += _sse(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    for i in range(deltas):
        out += _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": f'tok{i} "usage" '},
            },
        )
    out += _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    out += _sse(
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": final_usage},
    )
    return out + _sse("message_stop", {"type": "message_stop"})


def test_claude_stream_takes_input_from_message_start_and_output_from_message_delta() -> None:
    stream = _claude_stream(500, {"output_tokens": 501})
    head, tail = stream[:4096], stream[-4096:]
    assert b'"message_start"' not in tail  # a long stream: the tail alone would not do
    assert from_anthropic_stream(head, tail) == Usage(
        "claude-haiku-4-5", 2112, 501, 2613, cache_read=2000, cache_creation=100
    )
    # Newer API versions repeat the input counts in message_delta (cumulative; null kept out).
    newer = {"input_tokens": 15, "cache_read_input_tokens": None, "output_tokens": 9}
    short = _claude_stream(2, newer)
    assert from_anthropic_stream(short, short) == Usage(
        "claude-haiku-4-5", 2115, 9, 2124, cache_read=2000, cache_creation=100
    )


def test_claude_stream_cut_short_or_without_usage() -> None:
    stream = _claude_stream(3, {"output_tokens": 4})
    cut = stream[: stream.index(b"event: message_delta")]
    assert from_anthropic_stream(cut, cut) == Usage(
        "claude-haiku-4-5", 2112, 1, 2113, cache_read=2000, cache_creation=100
    )
    delta_only = stream[stream.index(b"event: message_delta") :]
    assert from_anthropic_stream(b"", delta_only) == Usage("", 0, 4, 4)
    assert from_anthropic_stream(b"", b"") is None
    error = _sse("error", {"type": "error", "error": {"type": "overloaded_error"}})
    assert from_anthropic_stream(error, error) is None


@given(st.binary(max_size=2000))
def test_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    from_json(raw)
    from_json(b'{"usage": ' + raw)
    from_stream_tail(b"data: " + raw)
    from_anthropic_stream(b'data: {"type": "message_start", ' + raw, b"data: " + raw)


def _tapped(route: str, body: bytes, chunk: int = 65536) -> tuple[Usage | None, int]:
    """``body`` sent as a 200 JSON answer through the forwarder's tap in ``chunk``-sized
    pieces: the usage it read and the most bytes it ever kept at once."""
    from proxy.exchange import Exchange
    from proxy.usage_tap import UsageTap

    sent: list[object] = []

    async def send(message: object) -> None:
        sent.append(message)

    async def run() -> tuple[Usage | None, int]:
        x = Exchange("POST", "/", route, 0.0)
        tap = UsageTap(x, send, None, True)  # type: ignore[arg-type]
        headers = [(b"content-type", b"application/json")]
        await tap.send({"type": "http.response.start", "status": 200, "headers": headers})
        most = 0
        for at in range(0, len(body), chunk):
            piece = body[at : at + chunk]
            await tap.send({"type": "http.response.body", "body": piece, "more_body": True})
            most = max(most, len(tap._kept) + len(tap._head or b""))
        await tap.send({"type": "http.response.body", "body": b""})
        tap.finish()
        assert b"".join(m["body"] for m in sent[1:]) == body  # type: ignore[index]
        return x.usage, most

    return asyncio.run(run())


def test_json_answers_of_any_size_keep_a_bounded_copy_and_still_give_usage() -> None:
    big = "é" * (1024 * 1024)  # 2 MiB of UTF-8, cut mid-character by the chunks
    chat = {
        "choices": [{"message": {"content": big}}],
        "created": 1,
        "id": "x",
        "model": "gpt-4o-2024-11-20",  # Azure sorts keys: the model comes after the choices
        "object": "chat.completion",
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }
    embeddings = {
        "object": "list",
        "data": [{"embedding": [0.125] * 300_000}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    claude = {
        "model": "claude-sonnet-4-5",
        "id": "msg_1",
        "type": "message",
        "content": [{"type": "text", "text": big}],
        "usage": _CLAUDE_USAGE,
    }
    cases = [
        ("v1", chat, Usage("gpt-4o-2024-11-20", 11, 7, 18)),
        ("v1", embeddings, Usage("text-embedding-3-small", 4, 0, 4)),
        ("anthropic", claude, Usage("claude-sonnet-4-5", 2112, 7, 2119, 2000, 100)),
    ]
    for route, answer, expected in cases:
        raw = json.dumps(answer, ensure_ascii=False).encode()
        assert len(raw) > 2 * 1024 * 1024
        for chunk in (65536, 1000):
            usage, most = _tapped(route, raw, chunk)
            assert usage == expected, (route, chunk)
            # Never more than a head and two tails, whatever the answer's size.
            assert most <= JSON_HEAD + 2 * JSON_TAIL + chunk, (route, chunk, most)
    # Small answers are still read whole.
    small = json.dumps(chat | {"choices": []}).encode()
    assert _tapped("v1", small, 7)[0] == Usage("gpt-4o-2024-11-20", 11, 7, 18)
