"""What the HTTP forwarder and the Realtime relay both work with, built once at startup.

The resolved settings and the runtime objects made from them (app.py): one gate, one upstream
pool, one token provider, the backends, and the metrics and access log every exchange records
to. Both paths take this one object rather than each its own copy of seven parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.access import AccessLog
from proxy.admission import Gate
from proxy.backends import Pool
from proxy.credentials.provider import TokenProvider
from proxy.settings import Settings
from proxy.upstream_session import UpstreamSession

if TYPE_CHECKING:
    from proxy.metrics import Metrics


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    gate: Gate
    upstream: UpstreamSession
    tokens: TokenProvider
    metrics: Metrics | None
    access: AccessLog
    pool: Pool
