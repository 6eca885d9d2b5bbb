"""Model usage read from copies of answers (usage.py)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from proxy.usage import Usage, from_json, from_stream_tail


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


@given(st.binary(max_size=2000))
def test_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    from_json(raw)
    from_json(b'{"usage": ' + raw)
    from_stream_tail(b"data: " + raw)
