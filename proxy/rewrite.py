"""Pure request and response rewriting: which upstream path a request maps to, which headers pass.

Standard library only, no I/O: the forwarder calls these on every request, and the property
tests exercise them directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Route families: local prefix -> upstream prefix, and whether the token is for the projects
# scope (https://ai.azure.com), which the Foundry project API and Claude both take.
# `/v1/...` serves `OpenAI(base_url=.../v1)`; `/anthropic/...` serves
# `Anthropic(base_url=.../anthropic)`, as Foundry serves Claude beside the OpenAI routes.
_ROUTES: tuple[tuple[bytes, str, bool], ...] = (
    (b"/v1/", "/openai/v1/", False),
    (b"/openai/", "/openai/", False),
    (b"/models/", "/models/", False),
    (b"/api/projects/", "/api/projects/", True),
    (b"/anthropic/", "/anthropic/", True),
)

# RFC 3986 pchar plus "/": what may appear unescaped in a path we forward.
_PATH_BYTES = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/%"
)
# Escapes that would let the upstream see a different path than the one checked here:
# dots and slashes (traversal), backslash (some servers treat it as "/"), an escaped "%"
# (double encoding, for servers that decode twice) and controls.
# Non-ASCII escapes are refused too: overlong UTF-8 forms (%C0%AE) decode to dots on lenient
# servers, and no Azure path segment needs them.
_FORBIDDEN_ESCAPES = frozenset({0x25, 0x2E, 0x2F, 0x5C, 0x7F, *range(0x20), *range(0x80, 0x100)})
_HEX = frozenset(b"0123456789abcdefABCDEF")
# Printable ASCII except "#": a fragment never belongs in a request target.
_QUERY_BYTES = frozenset(range(0x21, 0x7F)) - {0x23}
# Query parameters that carry a client's credential (Azure's api-key and subscription-key, RFC
# 6750 section 2.3's access_token, ...), by the normal form of their names: percent-decoded
# (repeatedly: some servers decode twice), lower-cased, letters and digits only, so api%2Dkey,
# %61pi-key, API_KEY, api-key%20 and api-key[] are all "apikey". A name that starts with one of
# these is dropped too (api-key%3Dx is a name to a server that decodes before it splits).
_CREDENTIAL_PARAMS = (
    b"apikey",
    b"xapikey",
    b"subscriptionkey",
    b"ocpapimsubscriptionkey",
    b"accesstoken",
    b"authorization",
)
# Without one of these (in any case) no name can have a credential's normal form.
_CREDENTIAL_HINTS = (b"%", b"key", b"token", b"auth")


class BadTarget(ValueError):
    """The request target cannot be forwarded; ``status`` says how to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: ``path_qs`` is appended to the configured origin as is."""

    path_qs: str
    projects: bool  # the token is for the projects scope (/api/projects/ and /anthropic/)
    path: str  # path_qs without the query: what the method and path policy judges


def _check_path(raw: bytes) -> None:
    if not raw.startswith(b"/") or not _PATH_BYTES.issuperset(raw):
        raise BadTarget(400, "the request path contains characters that are not allowed")
    # ";" parameters on dot segments ("/..;/") are dot segments to some servers (Tomcat).
    if (
        b"//" in raw
        or b"/./" in raw
        or b"/../" in raw
        or b"/.;" in raw
        or b"/..;" in raw
        or raw.endswith((b"/", b"/.", b"/.."))
    ):
        raise BadTarget(400, "the request path has empty or dot segments")
    index = raw.find(b"%")
    while index != -1:
        pair = raw[index + 1 : index + 3]
        if len(pair) != 2 or not _HEX.issuperset(pair):
            raise BadTarget(400, "the request path has a malformed percent-escape")
        if int(pair, 16) in _FORBIDDEN_ESCAPES:
            raise BadTarget(400, "the request path has an encoded slash, dot, percent or control")
        index = raw.find(b"%", index + 3)


def map_target(raw_path: bytes, query: bytes) -> Target:
    """Map a request's raw path and query onto the upstream, or raise BadTarget.

    The path is validated as it arrived (never decoded, never normalised) and forwarded as the
    same bytes, so the string that is checked is the string that is sent.
    """
    for local, upstream, projects in _ROUTES:  # noqa: B007 - the match is used below
        if raw_path.startswith(local):
            break
    else:
        raise BadTarget(
            404,
            "no such route: foundry-proxy serves /v1/, /openai/, /models/, /api/projects/ and "
            "/anthropic/",
        )
    _check_path(raw_path)
    if query:
        if not _QUERY_BYTES.issuperset(query):
            raise BadTarget(400, "the query string contains characters that are not allowed")
        query = without_credentials(query)
    path = upstream + raw_path[len(local) :].decode("ascii")
    return Target(path + "?" + query.decode("ascii") if query else path, projects, path)


def without_credentials(query: bytes) -> bytes:
    """``query`` without the parameters that carry a credential (_CREDENTIAL_PARAMS): the
    proxy's token is the only credential the upstream gets, for HTTP and WebSocket alike.
    Parameters are split on "&" and, as some servers also do, on ";"."""
    lowered = query.lower()
    if not any(hint in lowered for hint in _CREDENTIAL_HINTS):
        return query
    kept = [part for part in query.split(b"&") if not _carries_credential(part)]
    return b"&".join(kept)


def _carries_credential(part: bytes) -> bool:
    for piece in part.split(b";"):
        name = _normal_name(piece.split(b"=", 1)[0])
        if name.startswith(_CREDENTIAL_PARAMS):
            return True
    return False


def _normal_name(name: bytes) -> bytes:
    for _ in range(3):
        if b"%" not in name:
            break
        name = _percent_decoded(name)
    return bytes(c for c in name.lower() if 0x30 <= c <= 0x39 or 0x61 <= c <= 0x7A)


def _percent_decoded(text: bytes) -> bytes:
    """RFC 3986 section 2.1 decoding; a "%" not followed by two hex digits stays as it is."""
    out = bytearray()
    i = 0
    while i < len(text):
        pair = text[i + 1 : i + 3]
        if text[i] == 0x25 and len(pair) == 2 and _HEX.issuperset(pair):
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(text[i])
            i += 1
    return bytes(out)


# RFC 9110 section 7.6.1 hop-by-hop fields, plus their common non-standard relatives.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    }
)

# Never forwarded upstream: the client's own credentials (the proxy supplies the only one),
# framing (recomputed for the body actually sent), and headers that would let a local caller
# pretend to be someone else or override the method.
_REQUEST_DROP = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"authorization",
    b"api-key",
    b"api_key",
    b"x-api-key",
    b"ocp-apim-subscription-key",
    b"cookie",
    b"forwarded",
    b"x-real-ip",
    b"x-original-url",
    b"x-rewrite-url",
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
}
_REQUEST_DROP_PREFIXES = (b"x-forwarded-", b"x-envoy-")
# Where a client may present an inbound key (the OpenAI SDKs send Authorization: Bearer, the
# AzureOpenAI SDKs api-key, the Anthropic SDKs and Claude Code x-api-key or a bearer token).
_KEY_HEADERS = frozenset({b"authorization", b"api-key", b"x-api-key"})

# Response fields that describe the upstream hop, or that would leak between local callers.
_RESPONSE_DROP = HOP_BY_HOP | {b"set-cookie", b"set-cookie2", b"alt-svc"}


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    # RFC 9110 section 7.6.1: fields named in Connection are hop-by-hop for this message.
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


@dataclass(slots=True)
class Inbound:
    """What the forwarder needs from the request headers."""

    headers: list[tuple[str, str]]  # to send upstream, without Authorization
    length: int | None = None  # Content-Length, when given
    host: str | None = None
    origin: str | None = None
    cross_site: bool = False  # Sec-Fetch-Site: cross-site (a browser, another site's page)
    # What the client presented as a key (checked against inbound keys, never forwarded).
    presented: list[str] | None = None
    client_request_id: str = ""  # x-ms-client-request-id, forwarded as is


def request_headers(raw: list[tuple[bytes, bytes]]) -> Inbound:
    """Split the request headers into what goes upstream and what the proxy checks.

    ASGI servers give lower-case names (ASGI spec, HTTP connection scope). Values are decoded
    as UTF-8 because that is how the upstream client encodes them again; bytes that are not
    UTF-8 are refused rather than re-encoded into something else.
    """
    listed = _connection_tokens(raw) if any(n == b"connection" for n, _ in raw) else None
    inbound = Inbound([])
    out = inbound.headers
    encodings = chunked = False
    hosts = 0
    try:
        for name, value in raw:
            if name in _REQUEST_DROP or name.startswith(_REQUEST_DROP_PREFIXES):
                if name == b"content-length":
                    if not value.isdigit():
                        raise BadTarget(400, "the Content-Length header is not a number")
                    inbound.length = int(value)
                elif name == b"host":
                    hosts += 1
                    inbound.host = value.decode()
                elif name == b"transfer-encoding":
                    # Only plain chunked framing (RFC 9112 section 6.1): with any other coding
                    # the body would go upstream still encoded and without saying so.
                    if value.strip().lower() != b"chunked" or chunked:
                        raise BadTarget(400, "only Transfer-Encoding: chunked is accepted")
                    chunked = True
                elif name in _KEY_HEADERS:
                    if inbound.presented is None:
                        inbound.presented = []
                    key = value.decode().strip()
                    if name == b"authorization":
                        scheme, _, key = key.partition(" ")
                        key = key.strip() if scheme.lower() == "bearer" else ""
                    inbound.presented.append(key)
                continue
            if listed and name in listed:
                continue
            if name == b"origin":
                inbound.origin = value.decode()
            elif name == b"sec-fetch-site":
                inbound.cross_site = value == b"cross-site"
            elif name == b"accept-encoding":
                encodings = True
            elif name == b"x-ms-client-request-id":
                inbound.client_request_id = value.decode()
            out.append((name.decode(), value.decode()))
    except UnicodeDecodeError:
        raise BadTarget(400, "a request header is not valid UTF-8") from None
    if hosts != 1 or not inbound.host:
        # RFC 9112 section 3.2: a request without exactly one Host is answered 400; the
        # rebinding check needs the one Host there is.
        raise BadTarget(400, "the request must carry exactly one non-empty Host header")
    if chunked and inbound.length is not None:
        # RFC 9112 section 6.1: a message with both may be a smuggling attempt; a proxy should
        # refuse it and close the connection (nginx has since 1.21.1). docs/security.md, A1.
        raise BadTarget(400, "Content-Length together with Transfer-Encoding is not accepted")
    if not encodings:
        # Bodies pass through undecoded, so the upstream may compress only what the client
        # said it can decode; without this the HTTP client would offer gzip on its behalf.
        out.append(("Accept-Encoding", "identity"))
    return inbound


def response_headers(
    raw: Iterable[tuple[bytes, bytes]], status: int = 200
) -> list[tuple[bytes, bytes]]:
    """Upstream response headers to pass to the client, names lower-cased."""
    pairs = [(name.lower(), value) for name, value in raw]
    listed = _connection_tokens(pairs) if any(n == b"connection" for n, _ in pairs) else None
    # A 204 or 304 has no body whatever its Content-Length says (RFC 9110 section 8.6); the
    # ASGI server would otherwise wait for bytes that never come.
    drop = _RESPONSE_DROP | {b"content-length"} if status in (204, 304) else _RESPONSE_DROP
    return [
        (name, value)
        for name, value in pairs
        if name not in drop and not (listed and name in listed)
    ]
