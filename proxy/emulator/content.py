"""Deterministic content of emulated answers: model names, echo text, tokens, vectors, uploads."""

from __future__ import annotations

import hashlib
import re
from typing import Any


def emulated_model(name: str) -> str:
    """The model an answer names for a deployment: the emulator's, never a real one."""
    return name if name.startswith("emulated-") else f"emulated-{name}"


def last_user_text(request: dict[str, Any]) -> str:
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    given = request.get("input")
    if isinstance(given, str):
        return given
    if isinstance(given, list):
        return last_user_text({"messages": given})
    return ""


def answer_text(model: str, prompt: str) -> str:
    said = " ".join(prompt.split())[:200] or "nothing"
    return f"Hello from the foundry-proxy emulator ({model}). You said: {said}"


def token_pieces(text: str) -> list[str]:
    """Split into word-sized tokens, keeping the spaces, as a model would stream them."""
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def embedding(text: str, dimensions: int) -> list[float]:
    digest = b""
    counter = 0
    while len(digest) < dimensions:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    raw = [(b - 127.5) / 127.5 for b in digest[:dimensions]]
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in raw]


def multipart_parts(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data body by name: (filename or None, bytes)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return {}
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + match.group(1).encode()):
        head, sep, data = part.partition(b"\r\n\r\n")
        field = re.search(rb'\bname="([^"]*)"', head)
        if sep and field:
            name = re.search(rb'filename="([^"]*)"', head)
            filename = name.group(1).decode("utf-8", "replace") if name else None
            parts.setdefault(
                field.group(1).decode("utf-8", "replace"), (filename, data.removesuffix(b"\r\n"))
            )
    return parts
