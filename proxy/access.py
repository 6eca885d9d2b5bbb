"""The access log: one line per request, JSON for machines or text for people, on stdout.

Lines are built on the event loop (a dict and json.dumps, a few microseconds) and written by a
thread of their own, so a slow stdout reader (a log shipper, a terminal being scrolled) never
blocks the proxy. The thread belongs to the app's lifespan: started with it, drained and
joined when it ends. A line holds no header value that can carry a secret and no query string
(callers put api-key=... there).

A record is one line whatever its fields hold: what a client chose (the path, the model its
body names, its x-ms-client-request-id) and what the upstream sent (its request id) is cut to a
bounded length, and every character that could end a line or hide text (controls, C1 controls
such as U+0085, U+2028, U+2029, format characters) is escaped: as a JSON \\u escape in JSON
lines, as a \\x or \\u escape in text lines, where a space, which separates fields, is escaped too.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Literal, TextIO

from proxy.exchange import Exchange

# The C implementation behind json.dumps(ensure_ascii=True) for one string: quotes it and
# escapes every control and non-ASCII character, line separators included.
_quote: Callable[[str], str] = encode_basestring_ascii
# Longest field values written (characters); a longer one is cut and marked with "...".
MAX_PATH = 1024
MAX_FIELD = 256
# Lines waiting for the writer thread at most (~3 MB): a stdout nobody reads must not make the
# queue grow by a line per request. Lines past it are dropped, counted and warned about.
MAX_QUEUED = 10_000
_WARN_EVERY = 1000

log = logging.getLogger("foundry_proxy")

AccessFormat = Literal["json", "text", "off"]
_STOP_TEXT = "\x00stop"
BATCH_INTERVAL = 0.05


class AccessLog:
    def __init__(self, fmt: AccessFormat, credential: str, out: TextIO | None = None) -> None:
        self.enabled = fmt != "off"
        self._json = fmt == "json"
        self._credential = credential
        self._out = out if out is not None else sys.stdout
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._second = 0
        self._stamp = ""
        self.dropped = 0  # lines dropped because the writer was MAX_QUEUED lines behind

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._write, name="access-log", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread (called at shutdown)."""
        if self._thread is not None:
            self._lines.put(_STOP_TEXT)
            self._thread.join(5)
            self._thread = None

    def _write(self) -> None:
        # Woken by each line, the thread would take the GIL from the event loop once per
        # request (measured: most of the access log's cost); instead it wakes at most every
        # BATCH_INTERVAL and writes what has queued, in writes of whole lines.
        stopping = False
        while not stopping:
            batch: list[str] = []
            try:
                batch.append(self._lines.get())
                time.sleep(BATCH_INTERVAL)  # noqa: TID251 - the writer thread, not the loop
                while len(batch) < MAX_QUEUED:
                    batch.append(self._lines.get_nowait())
            except queue.Empty:
                pass
            if _STOP_TEXT in batch:
                stopping = True
                batch = [line for line in batch if line != _STOP_TEXT]
            try:
                for start in range(0, len(batch), 8):
                    # A few lines per write, each write well under PIPE_BUF (4 KiB): lines stay
                    # whole when stdout and stderr share a pipe (as under a supervisor).
                    self._out.write("".join(f"{line}\n" for line in batch[start : start + 8]))
                    self._out.flush()
            except (OSError, ValueError):
                return  # stdout closed: nothing left to log to

    def _now(self) -> str:
        # Formatted once a second, not once a request.
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._stamp

    def record(self, x: Exchange) -> None:
        if not self.enabled:
            return
        if self._lines.qsize() >= MAX_QUEUED:
            self.dropped += 1
            if self.dropped % _WARN_EVERY == 1:
                log.warning(
                    "access log: stdout is not being read; %d lines dropped so far (at most "
                    "%d wait to be written)",
                    self.dropped,
                    MAX_QUEUED,
                )
            return
        ended = x.ended if x.ended is not None else time.perf_counter()
        duration = round((ended - x.started) * 1000, 1)
        ttfb = round((x.first_byte - x.started) * 1000, 1) if x.first_byte is not None else None
        if self._json:
            # Built by hand with the C string encoder: json.dumps of a dict was half of the
            # access log's cost per request (benchmark, operations issue).
            q = _quote
            path, model = _cut(x.path, MAX_PATH), _cut(x.model, MAX_FIELD)
            request_id = _cut(x.client_request_id, MAX_FIELD)
            apim_id = _cut(x.apim_request_id, MAX_FIELD)
            usage = f',"tokens":{x.usage.total}' if x.usage is not None else ""
            # The backend's configured short name (docs/backends.md), never its origin.
            if x.backend:
                usage += f',"backend":{q(x.backend)}'
            error = f',"error":{q(_cut(x.upstream_error, MAX_FIELD))}' if x.upstream_error else ""
            if x.close_code is not None:
                error += (
                    f',"close_code":{x.close_code},"frames_in":{x.frames_in},'
                    f'"frames_out":{x.frames_out}'
                )
            self._lines.put(
                f'{{"time":"{self._now()}","method":{q(x.method)},"route":"{x.route}",'
                f'"path":{q(path)},"status":{x.status},"duration_ms":{duration},'
                f'"ttfb_ms":{"null" if ttfb is None else ttfb},"bytes_in":{x.bytes_in},'
                f'"bytes_out":{x.bytes_out},"streamed":{"true" if x.streamed else "false"},'
                f'"model":{q(model) if model else "null"},'
                f'"client_request_id":{q(request_id) if request_id else "null"},'
                f'"apim_request_id":{q(apim_id) if apim_id else "null"},'
                f'"credential":{q(self._credential)}{usage}{error}}}'
            )
        else:
            model = f" model={_text(x.model, MAX_FIELD)}" if x.model else ""
            if x.backend:
                model += f" backend={_text(x.backend, MAX_FIELD)}"
            self._lines.put(
                f"{x.method} {_text(x.path, MAX_PATH)} {x.status} {duration}ms ttfb={ttfb}ms "
                f"in={x.bytes_in} out={x.bytes_out}{model} "
                f"id={_text(x.client_request_id, MAX_FIELD)}"
            )


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


def _text(value: str, limit: int) -> str:
    """``value`` fit for a field of a text line: cut, then backslash, space and every
    character that is not printable escaped (str.isprintable: controls, separators other than
    the space, format characters)."""
    value = _cut(value, limit)
    if value.isprintable() and " " not in value and "\\" not in value:
        return value
    return "".join(_escaped(ch) for ch in value)


def _escaped(ch: str) -> str:
    if ch.isprintable() and ch not in " \\":
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
