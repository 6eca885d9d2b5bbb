"""The access log: one line per request, JSON for machines or text for people, on stdout.

Lines are built on the event loop (a dict and json.dumps, a few microseconds) and written by a
thread of their own, so a slow stdout reader (a log shipper, a terminal being scrolled) never
blocks the proxy. The thread belongs to the app's lifespan: started with it, drained and
joined when it ends. A line holds no header value that can carry a secret and no query string
(callers put api-key=... there).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import Literal, TextIO

from proxy.metrics import Exchange

AccessFormat = Literal["json", "text", "off"]
_STOP = object()


class AccessLog:
    def __init__(self, fmt: AccessFormat, credential: str, out: TextIO | None = None) -> None:
        self.enabled = fmt != "off"
        self._json = fmt == "json"
        self._credential = credential
        self._out = out if out is not None else sys.stdout
        self._lines: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._write, name="access-log", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread (called at shutdown)."""
        if self._thread is not None:
            self._lines.put(_STOP)
            self._thread.join(5)
            self._thread = None

    def _write(self) -> None:
        while (line := self._lines.get()) is not _STOP:
            try:
                # One flush per line: a line is never split by the stream's buffer, so lines
                # stay whole when stdout and stderr share a pipe (as under a supervisor).
                self._out.write(f"{line}\n")
                self._out.flush()
            except (OSError, ValueError):
                return  # stdout closed: nothing left to log to

    def record(self, x: Exchange) -> None:
        if not self.enabled:
            return
        ended = x.ended if x.ended is not None else time.perf_counter()
        duration = round((ended - x.started) * 1000, 1)
        ttfb = round((x.first_byte - x.started) * 1000, 1) if x.first_byte is not None else None
        if self._json:
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
                "method": x.method,
                "route": x.route,
                "path": x.path,
                "status": x.status,
                "duration_ms": duration,
                "ttfb_ms": ttfb,
                "bytes_in": x.bytes_in,
                "bytes_out": x.bytes_out,
                "streamed": x.streamed,
                "model": x.model or None,
                "client_request_id": x.client_request_id or None,
                "apim_request_id": x.apim_request_id or None,
                "credential": self._credential,
            }
            if x.usage is not None:
                entry["tokens"] = x.usage.total
            if x.upstream_error:
                entry["error"] = x.upstream_error
            self._lines.put(json.dumps(entry, separators=(",", ":")))
        else:
            model = f" model={x.model}" if x.model else ""
            self._lines.put(
                f"{x.method} {x.path} {x.status} {duration}ms ttfb={ttfb}ms "
                f"in={x.bytes_in} out={x.bytes_out}{model} id={x.client_request_id}"
            )
