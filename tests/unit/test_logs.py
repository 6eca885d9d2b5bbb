from __future__ import annotations

import logging

from proxy.logs import REDACTED, HandshakeFilter, RedactingFormatter, configure_logging

SECRET = "CANARY-SECRET-logs-0123456789"


def fmt(message: str, *args: object, exc: BaseException | None = None) -> str:
    formatter = RedactingFormatter("%(message)s", [SECRET])
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, message, args, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    return formatter.format(record)


def test_configured_secret_is_redacted_everywhere() -> None:
    assert SECRET not in fmt("value %s", SECRET)
    exc = ValueError(f"boom {SECRET}")
    assert SECRET not in fmt("failed", exc=exc)


def test_token_shapes_are_redacted() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2NvZ25pdGl2ZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl"
    text = fmt(
        "headers %s",
        {"authorization": "Bearer abc.def-123", "api-key": "k123456", "x": jwt},
    )
    assert "abc.def-123" not in text
    assert "k123456" not in text
    assert jwt not in text
    assert REDACTED in text
    assert "client_secret=[redacted]" in fmt("form client_secret=s3cr3t&scope=x")


def test_d41_credential_headers_are_redacted_in_any_header_map_format() -> None:
    values = {
        "authorization": "Basic dXNlcjpwYXNzd29yZA==",
        "Ocp-Apim-Subscription-Key": "0123456789abcdef0123456789abcdef",
        "x-api-key": "sk-live-abcdef",
        "cookie": "session=abc; other=def",
        "set-cookie": "id=xyz; HttpOnly",
        "x-identity-header": "platform-secret-value",
    }
    shapes = [
        str(values),
        str(list(values.items())),
        str([(k.encode(), v.encode()) for k, v in values.items()]),
        "\r\n".join(f"{k}: {v}" for k, v in values.items()),
    ]
    for shape in shapes:
        text = fmt("headers %s", shape)
        for value in values.values():
            assert value not in text, (shape, text)
        assert "session=abc" not in text
    # Harmless headers survive, so logs stay useful.
    assert "application/json" in fmt("%s", {"content-type": "application/json"})


def test_a_key_in_a_websocket_subprotocol_is_redacted() -> None:
    text = fmt("< sec-websocket-protocol: realtime, openai-insecure-api-key.sk-abc123XYZ, x")
    assert "sk-abc123XYZ" not in text
    assert "realtime" in text


def _handshake_line(msg: str, *args: object) -> str:
    """A record as uvicorn or websockets logs it on "uvicorn.error", through the filter that
    configure_logging installs there, then the formatter."""
    record = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, msg, args, None)
    assert HandshakeFilter().filter(record)
    return fmt_record(record)


def fmt_record(record: logging.LogRecord) -> str:
    return RedactingFormatter("%(message)s", [SECRET]).format(record)


def test_handshake_header_values_are_shown_only_for_harmless_headers() -> None:
    for name in ("x-functions-key", "X-Auth-Token", "token", "x-client-secret", "x-new-thing"):
        for direction in ("<", ">"):
            text = _handshake_line(f"{direction} %s: %s", name, "CANARY-value-0123")
            assert text == f"{direction} {name}: {REDACTED}"
    assert _handshake_line("< %s: %s", "User-Agent", "sdk/1.0") == "< User-Agent: sdk/1.0"
    assert _handshake_line("< %s: %s", "sec-websocket-protocol", "realtime, k") == (
        f"< sec-websocket-protocol: {REDACTED}"
    )


def test_handshake_request_targets_lose_their_query() -> None:
    target = "/v1/realtime?model=dep&api%2Dkey=CANARY-q-0123"
    text = _handshake_line("< %s %s %s", "GET", target, "HTTP/1.1")
    assert text == f"< GET /v1/realtime?{REDACTED} HTTP/1.1"
    for outcome in ("[accepted]", "403", "%d"):
        msg = '%s - "WebSocket %s" ' + outcome
        args: tuple[object, ...] = ("127.0.0.1:5000", target)
        if outcome == "%d":
            args += (401,)
        text = _handshake_line(msg, *args)
        assert "CANARY" not in text
        assert "model=dep" not in text
        assert "/v1/realtime" in text


def test_configure_logging_installs_the_filter_once() -> None:
    root, uvicorn_error = logging.getLogger(), logging.getLogger("uvicorn.error")
    saved = (list(root.handlers), root.level, list(uvicorn_error.filters))
    try:
        configure_logging("info")
        configure_logging("debug")
        filters = uvicorn_error.filters
        assert sum(isinstance(f, HandshakeFilter) for f in filters) == 1
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        uvicorn_error.filters[:] = saved[2]
