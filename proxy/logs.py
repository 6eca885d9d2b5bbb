"""Logging setup: one stderr handler whose formatter scrubs secrets from every line.

Redaction happens on the final text (message, arguments and traceback alike), so a secret that
reaches a log call by accident is still never written. What counts as a secret is decided in
proxy/redaction.py, for logs and error bodies alike.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from proxy.redaction import HARMLESS_HEADERS, Redactor
from proxy.redaction import REDACTED as REDACTED

# The lines uvicorn and websockets write about a WebSocket handshake ("uvicorn.error" logger):
# uvicorn's '<client> - "WebSocket <target>" <outcome>' at INFO, and at DEBUG websockets' request
# line and one line per header field, each way.
_HEADER_LINES = frozenset({"< %s: %s", "> %s: %s"})
_REQUEST_LINE = "< %s %s %s"
_UVICORN_WEBSOCKET = '"WebSocket %s"'


class RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self._redactor = Redactor.of(secrets)

    def redact(self, text: str) -> str:
        return self._redactor(text)

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class HandshakeFilter(logging.Filter):
    """Makes WebSocket handshake lines fit to show: the request target without its query (a
    client may put its key there, in any spelling), and header values only of harmless
    headers (redaction.HARMLESS_HEADERS): an allow-list, as x-functions-key, x-auth-token,
    token, x-client-secret... show that a deny-list never ends."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg, args = record.msg, record.args
        if not isinstance(msg, str) or not isinstance(args, tuple):
            return True
        if msg in _HEADER_LINES and len(args) == 2:
            if str(args[0]).lower() not in HARMLESS_HEADERS:
                record.args = (args[0], REDACTED)
        elif msg == _REQUEST_LINE or _UVICORN_WEBSOCKET in msg:
            record.args = tuple(_target_only(arg) for arg in args)
        return True


def _target_only(arg: object) -> object:
    if isinstance(arg, str) and "?" in arg:
        return arg.split("?", 1)[0] + "?" + REDACTED
    return arg


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
    handshakes = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, HandshakeFilter) for f in handshakes.filters):
        handshakes.addFilter(HandshakeFilter())
    # The token client announces every call at INFO; the provider already logs each outcome.
    quiet = "DEBUG" if level.upper() == "DEBUG" else "WARNING"
    for name in ("httpx2", "httpcore2"):
        logging.getLogger(name).setLevel(quiet)
