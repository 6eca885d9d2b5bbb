"""What one exchange did (an HTTP request or a Realtime session), filled in as it goes and
read when it ends by the metrics and the access log.

Its own module so that the exchange's paths need no metrics code: prometheus_client is
imported only when metrics are on (app.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.usage import Usage


@dataclass(slots=True)
class Exchange:
    """One request's or Realtime session's record (close code and frame counts: a session's)."""

    method: str
    path: str
    route: str
    started: float  # time.perf_counter()
    status: int = 0
    first_byte: float | None = None
    ended: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    streamed: bool = False
    deployment: str = ""
    client_request_id: str = ""
    apim_request_id: str = ""
    upstream_error: str = ""  # the proxy's error code when the upstream failed
    backend: str = ""  # the short name of the backend that answered (the last one tried)
    close_code: int | None = None  # a WebSocket session's close code
    frames_in: int = 0  # WebSocket messages from the client
    frames_out: int = 0  # WebSocket messages to the client
    ratelimit: dict[str, str] | None = None  # made only when the upstream sends them
    usage: Usage | None = None

    @property
    def model(self) -> str:
        return (self.usage.model if self.usage else "") or self.deployment
