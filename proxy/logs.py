"""Logging setup: one stderr handler whose formatter scrubs secrets from every line.

Redaction happens on the final text (message, arguments and traceback alike), so a secret that
reaches a log call by accident is still never written.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

# "Bearer <token>", JWT-shaped strings, and secret-bearing form or query fields.
_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    re.compile(
        r"(?i)((?:client_secret|client_assertion|access_token|api[-_]key|password)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+"
    ),
    # OpenAI's browser convention: the key inside a WebSocket subprotocol name, which
    # uvicorn's WebSocket implementation prints with the handshake at DEBUG.
    re.compile(r"(?i)(openai-insecure-api-key\.)[^\s,;\"']+"),
    # Credential-bearing headers however a header map is printed: "name: value",
    # {'name': 'value'} or ('name', 'value'), bytes included (test-plan D41). The whole value
    # goes, whatever its scheme (Basic, a cookie list, a subscription key).
    re.compile(
        r"(?i)((?:authorization|proxy-authorization|ocp-apim-subscription-key|x-api-key"
        r"|x-identity-header|set-cookie|cookie)[\"']?\s*[:=,]\s*b?[\"']?)[^\"'\r\n)}\]]+"
    ),
)
REDACTED = "[redacted]"


class RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        # Longest first, so a secret containing another is removed whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.lastindex else "") + REDACTED, text)
        return text

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Route all logging (ours, uvicorn's, aiohttp's) through one redacting stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", secrets)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own access log is off (the forwarder is the hot path); keep its error log.
    logging.getLogger("uvicorn.access").disabled = True
    # The token client announces every call at INFO; the provider already logs each outcome.
    quiet = "DEBUG" if level.upper() == "DEBUG" else "WARNING"
    for name in ("httpx2", "httpcore2"):
        logging.getLogger(name).setLevel(quiet)
