"""Making text safe to show: the one place that decides what a log line, an error body, /readyz
or the terminal may hold (docs/security.md: secrets and tokens never reach a log, an error body
or the disk).

Two kinds of rule, applied together:
- secrets known by value (the configured client secret, a secret or assertion read from a file,
  a platform's identity header), replaced wherever they stand, plain or URL-encoded (the form
  a gateway echoing a token request would repeat);
- shapes that are secrets whatever their value: bearer credentials, JWTs, secret-bearing form
  and query fields, the key in a WebSocket subprotocol, credential-bearing headers.

Text from outside (a token endpoint's error, a CLI's stderr) is redacted whole first and only
then cut to one line of bounded length: cutting first could leave half a secret that no rule
recognises any more.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"
#: Longest one-line message made from text the proxy does not control.
MAX_MESSAGE = 300
# A shorter "secret" would blank out ordinary words wherever it occurs.
_MIN_SECRET = 4

PATTERNS: tuple[re.Pattern[str], ...] = (
    # "Bearer <token>" in any case (RFC 6750 section 2.1).
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    # JWT-shaped: base64url of '{"' and more, with or without the later parts, so a token cut
    # short (or only its header and claims) is still recognised (RFC 7519 section 7.1).
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)*"),
    # Secret-bearing form, query and JSON fields.
    re.compile(
        r"(?i)((?:client_secret|client_assertion|access_token|refresh_token|id_token|api[-_]key"
        r"|password)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+"
    ),
    # OpenAI's browser convention: the key inside a WebSocket subprotocol name, which
    # uvicorn's WebSocket implementation prints with the handshake at DEBUG.
    re.compile(r"(?i)(openai-insecure-api-key\.)[^\s,;\"']+"),
    # Credential-bearing headers however a header map is printed: "name: value",
    # {'name': 'value'} or ('name', 'value'), bytes included (docs/security.md, D41). The whole
    # value goes, whatever its scheme (Basic, a cookie list, a subscription key), and with it
    # any part an earlier rule already redacted, so "Bearer [redacted]" leaves no remnant.
    re.compile(
        r"(?i)((?:authorization|proxy-authorization|ocp-apim-subscription-key|x-api-key"
        r"|x-identity-header|set-cookie|cookie)[\"']?\s*[:=,]\s*(?:b?[\"'])?)"
        r"(?:\[redacted\]|[^\"'\r\n)}\]])+"
    ),
)

#: Headers whose values may be shown. Any other header's value is redacted: an allow-list,
#: because services invent credential headers faster than a deny-list can name them
#: (x-functions-key, x-auth-token, ...).
HARMLESS_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "access-control-allow-headers",
        "access-control-allow-methods",
        "access-control-allow-origin",
        "apim-request-id",
        "cache-control",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "date",
        "host",
        "keep-alive",
        "openai-model",
        "openai-processing-ms",
        "openai-version",
        "origin",
        "retry-after",
        "retry-after-ms",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-key",
        "sec-websocket-version",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "x-ms-client-request-id",
        "x-ms-region",
        "x-ms-request-id",
        "x-request-id",
        "x-should-retry",
    }
)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Control characters left in a line would let outside text forge or hide log lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class Redactor:
    """Removes ``secrets`` (longest first, so a secret holding another goes whole) and every
    secret shape in PATTERNS from a text."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def of(cls, secrets: Iterable[str] = ()) -> Redactor:
        forms = {
            form
            for secret in secrets
            if len(secret) >= _MIN_SECRET
            for form in (secret, quote(secret, safe=""), quote_plus(secret))
        }
        return cls(tuple(sorted(forms, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        for pattern in PATTERNS:
            text = pattern.sub(_keep_label, text)
        return text


def _keep_label(found: re.Match[str]) -> str:
    """The field or header name a pattern captured stays; its value goes."""
    return (found.group(1) if found.lastindex else "") + REDACTED


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    return Redactor.of(secrets)(text)


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """The first non-blank line of ``text`` without colours or control characters, cut to
    ``limit`` characters (an ellipsis marks the cut)."""
    lines = (line.strip() for line in _ANSI.sub("", text).splitlines())
    line = _CONTROL.sub(" ", next((line for line in lines if line), ""))
    return line if len(line) <= limit else line[: limit - 1] + "…"


def safe_message(text: str, secrets: Iterable[str] = (), limit: int = MAX_MESSAGE) -> str:
    """Outside text fit for a log line or an error body: redacted whole, then one_line."""
    return one_line(redact(text, secrets), limit)


def redact_headers(
    headers: Iterable[tuple[str | bytes, str | bytes]],
) -> list[tuple[str, str]]:
    """A header map fit to show: names kept, values only of HARMLESS_HEADERS."""
    shown = []
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        shown.append((name, value if name.lower() in HARMLESS_HEADERS else REDACTED))
    return shown
