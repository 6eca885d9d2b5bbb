"""usage.model_of_request: the model a request body names, read only when cheap and safe."""

from __future__ import annotations

import json

import pytest

from proxy.usage import REQUEST_MODEL_LIMIT, model_of_request

MESSAGES = [{"role": "user", "content": 'say "model": "wrong" please'}]


@pytest.mark.parametrize(
    ("body", "model"),
    [
        ({"messages": MESSAGES, "model": "gpt-4o-mini"}, "gpt-4o-mini"),
        (
            {"model": "Meta-Llama-3.1-405B-Instruct", "messages": MESSAGES},
            "Meta-Llama-3.1-405B-Instruct",
        ),
        ({"input": "hi", "model": "ft:gpt-4o-mini:org::abc123"}, "ft:gpt-4o-mini:org::abc123"),
        # Only the top-level key counts, wherever a nested "model" sits.
        ({"tools": [{"model": "nested"}], "model": "top"}, "top"),
        ({"tools": [{"model": "nested"}]}, ""),
        ({"model": 4}, ""),
        ({"model": ""}, ""),
        ({"model": "two words"}, ""),
        ({"model": "line\nbreak"}, ""),
        ({"model": "x" * 300}, ""),
    ],
)
def test_model_of_json_bodies(body: dict[str, object], model: str) -> None:
    assert model_of_request(json.dumps(body).encode()) == model


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'["model", "x"]',
        b'{"model": "truncated',
        b'\xff{"model": "x"}',
        # A multipart audio upload names its model in a form field: not read.
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--b--\r\n',
        # Nesting deeper than the decoder's recursion limit, within the size limit.
        b'{"model": "m", "deep": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    ],
)
def test_no_model_from_what_is_not_a_json_object(raw: bytes) -> None:
    assert model_of_request(raw) == ""


def test_bodies_past_the_limit_are_not_decoded() -> None:
    filler = "x" * REQUEST_MODEL_LIMIT
    assert model_of_request(json.dumps({"model": "m", "messages": filler}).encode()) == ""
    small = json.dumps({"model": "m", "messages": "x"}).encode()
    assert model_of_request(b" \n" + small) == "m"
