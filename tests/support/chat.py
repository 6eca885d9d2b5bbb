"""The chat request the tests send, and where it goes.

The fake Foundry answers any model name; the content is irrelevant to the proxy, which forwards
the body unchanged. Treat ``CHAT`` as read-only: build variants with ``CHAT | {...}``.
"""

from __future__ import annotations

import json
from typing import Any

CHAT: dict[str, Any] = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
#: Where a client sends it (base URL ``proxy/v1``, as the openai SDK does).
CHAT_PATH = "/v1/chat/completions"
#: Where the proxy forwards it: Foundry's OpenAI v1 route.
UPSTREAM_CHAT_PATH = "/openai/v1/chat/completions"


def chat_body(**extra: Any) -> bytes:
    """``CHAT`` (with ``extra`` fields, e.g. ``stream=True``) as JSON bytes."""
    return json.dumps(CHAT | extra).encode()
