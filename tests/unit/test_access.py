"""One access-log record is one line, whatever a client or the upstream put in its fields."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

from proxy.access import MAX_FIELD, MAX_PATH, MAX_QUEUED, AccessLog
from proxy.exchange import Exchange

# Every character a log reader may take for the end of a line, plus ones that hide text.
BREAKS = ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\x1b[2K"]
HIDERS = ["\u202e", "\u200b", "\u2066", "\x00", "\x7f", "\t"]


def _records(fmt: str, exchanges: list[Exchange]) -> str:
    out = io.StringIO()
    log = AccessLog(fmt, "client secret", out)  # type: ignore[arg-type]
    log.start()
    for x in exchanges:
        log.record(x)
    log.stop()
    return out.getvalue()


def _exchange(text: str) -> Exchange:
    x = Exchange("POST", "/v1/chat/completions" + text, "v1", time.perf_counter(), status=200)
    x.deployment = "model" + text
    x.client_request_id = "id" + text
    x.apim_request_id = "apim" + text
    x.upstream_error = "upstream_" + text
    return x


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_each_record_is_one_printable_line(fmt: str) -> None:
    forged = [f"{c}FORGED GET /admin 200{c}" for c in BREAKS + HIDERS]
    written = _records(fmt, [_exchange(text) for text in forged])
    lines = written.splitlines()
    assert len(lines) == len(forged), lines
    assert written.count("\n") == len(forged)
    for line in lines:
        assert line.isprintable(), repr(line)
        assert not line.startswith("FORGED")
    if fmt == "json":
        for line, text in zip(lines, forged, strict=True):
            assert line.isascii()
            record = json.loads(line)
            assert record["client_request_id"] == "id" + text
            assert record["model"] == "model" + text


def test_text_fields_cannot_forge_fields() -> None:
    [line] = _records("text", [_exchange(" status=999 model=forged")]).splitlines()
    assert " status=999" not in line
    assert "id=id\\x20status=999\\x20model=forged" in line


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_fields_are_cut_to_bounded_lengths(fmt: str) -> None:
    [line] = _records(fmt, [_exchange("x" * 100_000)]).splitlines()
    assert len(line) < MAX_PATH + 5 * MAX_FIELD + 600


class _Stuck(io.StringIO):
    """A stdout nobody reads: writes block until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return super().write(text)


def test_a_stdout_nobody_reads_does_not_grow_the_queue() -> None:
    """At most MAX_QUEUED lines wait, plus the batch the blocked writer holds (at most as
    many again); the rest are dropped and counted."""
    out = _Stuck()
    log = AccessLog("json", "client secret", out)
    log.start()
    sent = 3 * MAX_QUEUED
    try:
        for _ in range(sent):
            log.record(_exchange(""))
        assert log.dropped >= sent - 2 * MAX_QUEUED
    finally:
        out.release.set()
        log.stop()
    written = len(out.getvalue().splitlines())
    assert written + log.dropped == sent
    assert written <= 2 * MAX_QUEUED
