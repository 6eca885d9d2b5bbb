"""Logging setup: one stderr handler whose formatter scrubs secrets from every line.

Redaction happens on the final text (message, arguments and traceback alike), so a secret that
reaches a log call by accident is still never written. What counts as a secret is decided in
proxy/redaction.py, for logs and error bodies alike.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from proxy.redaction import REDACTED as REDACTED
from proxy.redaction import Redactor


class RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self._redactor = Redactor.of(secrets)

    def redact(self, text: str) -> str:
        return self._redactor(text)

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
